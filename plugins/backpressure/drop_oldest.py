"""``backpressure.strategy: drop_oldest``: discard the oldest buffered events while too full."""

from __future__ import annotations

from typing import Callable

from savegress_gw import Backpressure, hookimpl


class DropOldestBackpressure(Backpressure):
    """While engaged, the oldest events not yet handed to a worker are dropped (and counted) to
    make room for the events the source process keeps reading.

    Freshest data wins: suits monitoring and metrics streams where stale events lose their value.
    """

    name = "drop_oldest"
    action = "drop_oldest"


@hookimpl
def gw_register_components(register: Callable[[type[Backpressure]], None]) -> None:
    register(DropOldestBackpressure)
