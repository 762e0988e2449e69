"""``rate_limiting.algorithm: sliding_window``: at most ``max_requests`` events per trailing window.

The window is kept as counts in sub-buckets in shared memory (``shared_slots``), so the limit is
global across worker processes.
"""

from __future__ import annotations

from time import monotonic
from typing import Callable

from pydantic import Field

from savegress_gw import ComponentConfig, Context, Limiter, hookimpl
from savegress_gw.shared import SharedBlock
from savegress_gw.units import Duration

BUCKETS = 10
"""Sub-buckets per window: the counts' time resolution is ``window_size / BUCKETS``."""
RING = BUCKETS + 1
"""Sub-buckets counted: the current, partly elapsed one plus ``BUCKETS`` full ones."""
CURRENT, TOTAL, COUNTS = 0, 1, 2
"""Slots: index of the newest sub-bucket, events counted in the ring, then the ring of counts."""


class SlidingWindowLimiter(Limiter):
    """At most ``max_requests`` events in any trailing ``window_size``, over all workers.

    Approximation: events are counted per sub-bucket of ``window_size / 10`` and an event is
    forgotten when its sub-bucket has been out of the window for a whole sub-bucket, i.e. between
    1.0 and 1.1 ``window_size`` after it passed. The limit is therefore never exceeded, and the
    sustained throughput is between 1/1.1 and 1 times ``max_requests`` per ``window_size``.
    A batch larger than ``max_requests`` passes only when nothing is counted, and counts in full.
    """

    name = "sliding_window"
    shared_slots = COUNTS + RING

    class Config(ComponentConfig):
        window_size: Duration = Field(1.0, gt=0)
        """Length of the trailing window."""
        max_requests: int = Field(10000, ge=1)
        """Most events that pass in any trailing ``window_size``, over all workers."""

    def open(self, context: Context) -> None:
        # All-zero slots are a valid empty window, so there is nothing to set up.
        self._shared = context.shared if context.shared is not None else SharedBlock(self.shared_slots)
        self._width = self.config.window_size / BUCKETS

    def acquire(self, count: int) -> float:
        if count <= 0:
            return 0.0
        limit = self.config.max_requests
        slots = self._shared.slots
        with self._shared.lock:
            # time.monotonic() is CLOCK_MONOTONIC on Linux: one system-wide clock, so the sub-bucket
            # indices that different processes derive from it agree.
            now = monotonic()
            index = int(now // self._width)
            self._advance(index)
            total = slots[TOTAL]
            if total + count <= limit or total == 0:
                slots[COUNTS + index % RING] += count
                slots[TOTAL] = total + count
                return 0.0
            oldest = index - BUCKETS
            freed = slots[COUNTS + oldest % RING]
            while total - freed + count > limit and total - freed > 0:
                oldest += 1
                freed += slots[COUNTS + oldest % RING]
            # Sub-bucket k is counted until sub-bucket k + RING starts; the floor keeps float rounding
            # at that boundary from returning 0.0, which would mean "taken".
            return max((oldest + RING) * self._width - now, 1e-6)

    def _advance(self, index: int) -> None:
        """Make ``index`` the newest sub-bucket, forgetting those that left the window. Hold the lock."""
        slots = self._shared.slots
        current = int(slots[CURRENT])
        for k in range(current + 1, min(index, current + RING) + 1):
            slots[TOTAL] -= slots[COUNTS + k % RING]
            slots[COUNTS + k % RING] = 0.0
        slots[CURRENT] = max(current, index)


@hookimpl
def gw_register_components(register: Callable[[type[Limiter]], None]) -> None:
    register(SlidingWindowLimiter)
