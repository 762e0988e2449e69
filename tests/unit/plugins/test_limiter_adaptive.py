"""rate_limiting.algorithm: adaptive, AIMD on delivery latency with a shared rate."""

from __future__ import annotations

import time

import pytest

from savegress_gw.errors import ProfileError
from savegress_gw.shared import SharedBlock
from savegress_gw.testing import build, make_context, validated
from savegress_gw_plugins.limiters import adaptive, sliding_window, token_bucket
from savegress_gw_plugins.limiters.adaptive import AdaptiveLimiter
from tests.harness.clock import ManualClock, patch_monotonic

LIMITERS = (token_bucket, sliding_window, adaptive)
HIGH_VOLUME = {"algorithm": "adaptive",
               "adaptive": {"min_rate": 10000, "max_rate": 200000, "target_latency": "100ms"}}
"""The guide's High Volume profile block."""
STEERING = {"min_rate": 100, "max_rate": 1000, "target_latency": "100ms", "adjustment_interval": "1s"}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    return patch_monotonic(monkeypatch, adaptive)


def limiter(options: dict) -> AdaptiveLimiter:
    built, _ = build("limiter", {"rate_limiting": {"algorithm": "adaptive", "adaptive": options}}, *LIMITERS)
    assert isinstance(built, AdaptiveLimiter)
    return built


def test_high_volume_block_builds_and_starts_at_max_rate() -> None:
    built, _ = build("limiter", {"rate_limiting": HIGH_VOLUME}, *LIMITERS)
    assert isinstance(built, AdaptiveLimiter)
    options = built.config.adaptive
    assert (options.min_rate, options.max_rate, options.target_latency, options.adjustment_interval, options.enabled) \
        == (10000, 200000, 0.1, 1.0, True)
    assert built.rate == 200000


@pytest.mark.parametrize("options,message", [
    ({"min_rate": 5000, "max_rate": 1000}, r"rate_limiting\.adaptive: min_rate \(5000\) must not exceed max_rate \(1000\)"),
    ({"max_rate": 0}, r"rate_limiting\.adaptive\.max_rate: Input should be greater than 0"),
    ({"adjustment_interval": "0s"}, r"rate_limiting\.adaptive\.adjustment_interval: Input should be greater than 0"),
    ({"target": "1s"}, r"rate_limiting\.adaptive\.target: unknown key"),
])
def test_invalid_settings_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        validated({"rate_limiting": {"algorithm": "adaptive", "adaptive": options}}, *LIMITERS)


def test_aimd_once_per_interval_within_bounds(clock: ManualClock) -> None:
    limit = limiter(STEERING)
    assert limit.rate == 1000
    clock.now += 0.5
    limit.observe_latency(0.5)
    assert limit.rate == 1000, "no adjustment before the interval has passed"
    clock.now += 0.5
    limit.observe_latency(0.01)
    assert limit.rate == 500, "the worst latency of the interval was above target"
    clock.now += 1.0
    limit.observe_latency(0.01)
    assert limit.rate == 600, "+10% of max_rate after a good interval"
    rates = []
    for _ in range(4):
        clock.now += 1.0
        limit.observe_latency(0.2)
        rates.append(limit.rate)
    assert rates == [300, 150, 100, 100]
    for _ in range(12):
        clock.now += 1.0
        limit.observe_latency(0.1)
    assert limit.rate == 1000, "latency at target is good; never above max_rate"


def test_disabled_keeps_max_rate(clock: ManualClock) -> None:
    limit = limiter({**STEERING, "enabled": False})
    for _ in range(3):
        clock.now += 1.0
        limit.observe_latency(5.0)
    assert limit.rate == 1000


def test_bucket_follows_the_current_rate(clock: ManualClock) -> None:
    limit = limiter(STEERING)
    assert limit.acquire(100) == 0.0, "starts with 0.1 s of max_rate"
    assert limit.acquire(10) == pytest.approx(0.010)
    clock.now += 1.0
    limit.observe_latency(1.0)
    assert limit.rate == 500
    assert limit.acquire(50) == 0.0, "refilled up to 0.1 s of the new rate"
    assert limit.acquire(10) == pytest.approx(0.020)


def test_rate_is_shared_by_instances_on_one_block(clock: ManualClock) -> None:
    block = SharedBlock(AdaptiveLimiter.shared_slots)
    config = AdaptiveLimiter.Config.model_validate({"adaptive": STEERING})
    first, second = AdaptiveLimiter(config), AdaptiveLimiter(config)
    first.open(make_context(shared=block))
    clock.now += 1.0
    first.observe_latency(1.0)
    second.open(make_context(shared=block))
    assert second.rate == 500, "a late opener keeps the shared rate"
    clock.now += 1.0
    second.observe_latency(1.0)
    assert first.rate == 250


def admit_for(limit: AdaptiveLimiter, duration: float) -> int:
    admitted = 0
    deadline = time.monotonic() + duration
    while (now := time.monotonic()) < deadline:
        wait = limit.acquire(25)
        if wait:
            time.sleep(min(wait, deadline - now))
        else:
            admitted += 25
    return admitted


def test_measured_rate_follows_the_adjustments() -> None:
    limit = limiter({"min_rate": 500, "max_rate": 5000, "target_latency": "50ms", "adjustment_interval": "100ms"})
    most = 5000 * 0.1 + 5000 * 0.4  # a full bucket (0.1 s of the rate) plus the refill
    assert 0.85 * most <= admit_for(limit, 0.4) <= most + 25
    deadline = time.monotonic() + 1.0
    while limit.rate == 5000 and time.monotonic() < deadline:
        limit.observe_latency(0.2)
        time.sleep(0.005)
    assert limit.rate == 2500
    most = 2500 * 0.1 + 2500 * 0.4
    assert 0.85 * 2500 * 0.4 <= admit_for(limit, 0.4) <= most + 25
