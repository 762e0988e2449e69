"""``backpressure.strategy: weighted_fair``: priority tables go first when the buffer is full."""

from __future__ import annotations

from typing import Any, Callable

from savegress_gw import Backpressure, ComponentConfig, hookimpl


class WeightedFairBackpressure(Backpressure):
    """Per-table queues in front of the worker rings: while the rings are full, frames of
    ``parallel.priority.high_priority_tables`` and ``medium_priority_tables`` are handed to the
    workers first, 4 : 2 : 1 against everything else (so nothing starves). The source keeps reading
    until the buffer is full, then blocks: nothing is dropped. Order holds per table.
    """

    name = "weighted_fair"
    action = "prioritize"

    @classmethod
    def check_profile(cls, config: ComponentConfig, profile: Any) -> list[str]:
        priority = profile.parallel.priority
        if priority.high_priority_tables or priority.medium_priority_tables:
            return []
        return ["backpressure.strategy: weighted_fair needs tables to favour: set "
                "parallel.priority.high_priority_tables (and/or medium_priority_tables)"]


@hookimpl
def gw_register_components(register: Callable[[type[Backpressure]], None]) -> None:
    register(WeightedFairBackpressure)
