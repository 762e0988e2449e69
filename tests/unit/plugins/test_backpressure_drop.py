"""backpressure.strategy: drop_oldest and drop_newest."""

from __future__ import annotations

import pytest

from savegress_gw.testing import build
from savegress_gw_plugins.backpressure import drop_newest, drop_oldest, pause
from savegress_gw_plugins.backpressure.drop_newest import DropNewestBackpressure
from savegress_gw_plugins.backpressure.drop_oldest import DropOldestBackpressure

STRATEGIES = (pause, drop_oldest, drop_newest)


@pytest.mark.parametrize("name,cls", [("drop_oldest", DropOldestBackpressure), ("drop_newest", DropNewestBackpressure)])
def test_selected_by_strategy_with_its_action(name: str, cls: type) -> None:
    built, _ = build("backpressure", {"backpressure": {"strategy": name}}, *STRATEGIES)
    assert type(built) is cls
    assert built.action == name


@pytest.mark.parametrize("name", ["drop_oldest", "drop_newest"])
def test_hysteresis_with_the_profile_watermarks(name: str) -> None:
    built, _ = build("backpressure", {"backpressure": {"strategy": name, "high_watermark": 0.9,
                                                       "low_watermark": 0.5}}, *STRATEGIES)
    sequence = [(0.85, False), (0.9, True), (0.6, True), (0.5, False), (0.89, False), (0.99, True)]
    assert [built.update(u) for u, _ in sequence] == [engaged for _, engaged in sequence]
    assert built.activations == 2
