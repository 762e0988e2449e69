"""``backpressure.strategy: buffer``: spill to disk instead of stopping the source."""

from __future__ import annotations

from typing import Callable

from savegress_gw import Backpressure, hookimpl


class BufferBackpressure(Backpressure):
    """While engaged, new frames go to the spill under ``buffer.overflow.path`` (compressed,
    bounded by ``buffer.overflow.max_size``) instead of the worker rings; once released, the
    spill is fed back in order, and new frames queue behind it until it is empty. When the spill
    is full the source is paused, so nothing is dropped.
    """

    name = "buffer"
    action = "spill"


@hookimpl
def gw_register_components(register: Callable[[type[Backpressure]], None]) -> None:
    register(BufferBackpressure)
