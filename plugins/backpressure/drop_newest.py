"""``backpressure.strategy: drop_newest``: discard incoming events while the buffer is too full."""

from __future__ import annotations

from typing import Callable

from savegress_gw import Backpressure, hookimpl


class DropNewestBackpressure(Backpressure):
    """While engaged, events the source process reads are dropped and counted, not buffered.

    The source keeps reading at full speed, so the buffer drains; what was already buffered is
    delivered. Suits backfills that can be re-read later.
    """

    name = "drop_newest"
    action = "drop_newest"


@hookimpl
def gw_register_components(register: Callable[[type[Backpressure]], None]) -> None:
    register(DropNewestBackpressure)
