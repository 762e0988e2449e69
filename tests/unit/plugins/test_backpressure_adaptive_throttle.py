"""``adaptive_throttle``: the read rate falls while engaged and recovers after release."""

from __future__ import annotations

import pytest

from savegress_gw.errors import ProfileError
from savegress_gw.testing import build, validated
from savegress_gw_plugins.backpressure import adaptive_throttle
from savegress_gw_plugins.backpressure.adaptive_throttle import AdaptiveThrottleBackpressure

PROFILE = {"backpressure": {"strategy": "adaptive_throttle", "high_watermark": 0.8, "low_watermark": 0.4,
                            "throttle": {"min_rate": 100, "max_rate": 10_000, "adjustment_interval": "100ms"}}}


def throttle() -> AdaptiveThrottleBackpressure:
    component, _ = build("backpressure", PROFILE, adaptive_throttle)
    assert isinstance(component, AdaptiveThrottleBackpressure)
    return component


def test_no_limit_until_engaged() -> None:
    bp = throttle()
    bp.update(0.5)
    assert bp.read_allowance(0.0) is None


def test_rate_falls_while_engaged_down_to_min_rate_and_reads_are_paced() -> None:
    bp = throttle()
    assert bp.update(0.9)
    now = 0.0
    rates = []
    for _ in range(30):
        now += 0.1
        bp.read_allowance(now)
        rates.append(bp.rate)
    assert rates == sorted(rates, reverse=True) and rates[0] < 10_000 and rates[-1] == 100
    full = bp.read_allowance(now)
    assert full == pytest.approx(10)  # the bucket holds one interval at 100 events/s
    bp.consumed(int(full))
    assert bp.read_allowance(now) < 1
    assert bp.read_allowance(now + 0.05) == pytest.approx(5, abs=0.01)  # 0.05 s at 100 events/s


def test_recovers_after_release_and_lifts_the_limit_at_max_rate() -> None:
    bp = throttle()
    bp.update(0.9)
    now = 0.0
    for _ in range(10):
        now += 0.1
        bp.read_allowance(now)
    low = bp.rate
    bp.update(0.3)
    assert not bp.engaged
    now += 0.1
    assert bp.read_allowance(now) is not None and bp.rate == pytest.approx(low * 1.25)
    for _ in range(40):
        now += 0.1
        allowance = bp.read_allowance(now)
    assert allowance is None and bp.rate == 10_000


def test_min_rate_above_max_rate_is_refused() -> None:
    with pytest.raises(ProfileError, match="backpressure.throttle: min_rate"):
        validated({"backpressure": {"strategy": "adaptive_throttle",
                                    "throttle": {"min_rate": 10, "max_rate": 5}}}, adaptive_throttle)
