"""backpressure.strategy: pause, and the hysteresis every strategy shares."""

from __future__ import annotations

import pytest

from savegress_gw.errors import ProfileError
from savegress_gw.testing import build, make_context, validated
from savegress_gw_plugins.backpressure import drop_newest, drop_oldest, pause
from savegress_gw_plugins.backpressure.pause import PauseBackpressure

STRATEGIES = (pause, drop_oldest, drop_newest)
LOW_LATENCY = {"strategy": "pause", "high_watermark": 0.7}
"""The guide's Low Latency profile block."""


def strategy(section: dict) -> PauseBackpressure:
    built, _ = build("backpressure", {"backpressure": section}, *STRATEGIES)
    assert isinstance(built, PauseBackpressure)
    return built


def test_low_latency_block_builds_with_the_default_low_watermark() -> None:
    backpressure = strategy(LOW_LATENCY)
    assert (backpressure.action, backpressure.high_watermark, backpressure.low_watermark) == ("pause", 0.7, 0.4)
    assert not backpressure.engaged
    assert backpressure.activations == 0


def test_is_the_default_strategy() -> None:
    assert strategy({}).high_watermark == 0.8


def test_hysteresis_engages_at_high_and_releases_at_low() -> None:
    backpressure = strategy(LOW_LATENCY)
    sequence = [(0.5, False), (0.69, False), (0.7, True), (0.95, True), (0.5, True), (0.41, True),
                (0.4, False), (0.6, False), (0.69, False), (1.0, True), (0.0, False)]
    for utilization, engaged in sequence:
        assert backpressure.update(utilization) is engaged, utilization
        assert backpressure.engaged is engaged
    assert backpressure.activations == 2


def test_activations_count_engagements_not_updates() -> None:
    backpressure = strategy({"high_watermark": 0.9, "low_watermark": 0.1})
    for utilization in [0.9, 0.95, 1.0, 0.5, 0.2, 0.9, 0.11, 0.1, 0.9]:
        backpressure.update(utilization)
    assert backpressure.activations == 2
    assert backpressure.engaged


def test_without_profile_watermarks_are_the_defaults() -> None:
    backpressure = PauseBackpressure(PauseBackpressure.Config())
    backpressure.open(make_context())
    assert (backpressure.high_watermark, backpressure.low_watermark) == (0.8, 0.4)
    assert [backpressure.update(u) for u in (0.79, 0.8, 0.41, 0.4)] == [False, True, True, False]


def test_disabled_builds_no_backpressure() -> None:
    profile = validated({"backpressure": {"enabled": False, "strategy": "pause"}}, *STRATEGIES)
    assert profile.selected("backpressure") is None


@pytest.mark.parametrize("section,message", [
    ({"high_watermark": 0.5, "low_watermark": 0.6},
     r"backpressure: low_watermark \(0.6\) must be below high_watermark \(0.5\)"),
    ({"high_watermark": 1.5}, r"backpressure\.high_watermark: Input should be less than or equal to 1"),
    ({"strategy": "pause", "throttle": {}}, r"backpressure\.throttle: unknown key"),
])
def test_invalid_sections_are_refused(section: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        validated({"backpressure": section}, *STRATEGIES)
