"""Batchers: when a worker's pending events become a batch for the sink.

Three policies from ``batching.*``: fixed (``max_size`` or ``max_wait``, whichever first),
adaptive (the size moves within ``adaptive_config`` bounds toward ``target_latency``, AIMD every
``adjustment_interval``), and time (``mode: time``: everything pending every ``interval``, in
batches of at most ``max_size``). All work on whole :class:`Batch` columns, never per event.
"""

from __future__ import annotations

import time
from collections import deque

from savegress_gw.components import Batch
from savegress_gw.profile.settings import BatchingSettings


class Batcher:
    """Accumulates events and hands out batches when the policy says so.

    ``take(now)`` returns the next ready batch or None; ``take(now, force=True)`` returns whatever
    is pending (shutdown). Batches come out in arrival order; each knows its position in the
    worker's event stream through :attr:`taken` (events handed out so far).

    Added batches are kept as they are (never modified; the caller must not modify them either)
    instead of being copied into one pending batch: an added batch that is exactly what ``take``
    hands out next is handed out itself, one that holds more is sliced from a cursor, and only a
    batch that spans several added ones is assembled from them.
    """

    def __init__(self, max_size: int, max_wait_s: float) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._parts: deque[Batch] = deque()  # pending events in arrival order, the first from _start on
        self._start = 0
        self._count = 0
        self._first_at: float | None = None
        self.taken = 0

    def __len__(self) -> int:
        return self._count

    def add(self, batch: Batch, now: float | None = None) -> None:
        if not batch:
            return
        if self._first_at is None:
            self._first_at = time.monotonic() if now is None else now
        self._parts.append(batch)
        self._count += len(batch)

    def ready(self, now: float) -> bool:
        return self._count >= self.max_size or (
            self._first_at is not None and now - self._first_at >= self.max_wait_s
        )

    def next_deadline(self) -> float | None:
        """Monotonic time at which pending events become due, or None when nothing is pending."""
        return None if self._first_at is None else self._first_at + self.max_wait_s

    def take(self, now: float, force: bool = False) -> Batch | None:
        if not self._count or not (force or self.ready(now)):
            return None
        size = min(self.max_size, self._count)
        batch = self._cut(size)
        self._count -= size
        if self._count:
            self._first_at = now  # the remainder has waited, but keep latency bounded by sending it next
        else:
            self._first_at = None
        self.taken += size
        return batch

    def _cut(self, size: int) -> Batch:
        """The next ``size`` pending events (``size`` <= pending), taken off the parts."""
        parts, start = self._parts, self._start
        first = parts[0]
        if start == 0 and len(first) == size:
            return parts.popleft()
        if len(first) - start > size:
            self._start = start + size
            return first.slice(start, start + size)
        batch = first.slice(start, len(first))
        parts.popleft()
        self._start = 0
        while len(batch) < size:
            part = parts[0]
            need = size - len(batch)
            if len(part) > need:
                batch.extend(part.slice(0, need))
                self._start = need
                break
            batch.extend(part)
            parts.popleft()
        return batch

    def observe_latency(self, seconds: float, now: float) -> None:
        """Delivery latency of an acknowledged batch (adaptive batchers steer by it)."""


class AdaptiveBatcher(Batcher):
    """Fixed batching whose ``max_size`` moves within ``[min_size, max_size]`` by AIMD.

    Every ``adjustment_interval``: if the worst latency observed exceeded ``target_latency`` the
    size halves; otherwise, when the last batches were full (the load would fill bigger ones)
    or throughput is below ``target_throughput``, it grows by a quarter.
    """

    def __init__(self, settings: BatchingSettings) -> None:
        bounds = settings.adaptive_config
        super().__init__(max(bounds.min_size, min(settings.max_size, bounds.max_size)), settings.max_wait)
        self.min_size, self.max_bound = bounds.min_size, bounds.max_size
        self.target_latency = settings.target_latency or bounds.target_latency
        self.interval = bounds.adjustment_interval
        self.target_throughput = settings.target_throughput
        self._window_start = time.monotonic()
        self._worst = 0.0
        self._full = 0
        self._batches = 0
        self._events = 0

    def take(self, now: float, force: bool = False) -> Batch | None:
        batch = super().take(now, force)
        if batch is not None:
            self._batches += 1
            self._events += len(batch)
            self._full += len(batch) >= self.max_size
        return batch

    def observe_latency(self, seconds: float, now: float) -> None:
        self._worst = max(self._worst, seconds)
        if now - self._window_start < self.interval:
            return
        rate = self._events / max(now - self._window_start, 1e-9)
        if self._worst > self.target_latency:
            self.max_size = max(self.min_size, self.max_size // 2)
        elif self._batches and self._full * 2 >= self._batches or (self.target_throughput and rate < self.target_throughput):
            self.max_size = min(self.max_bound, self.max_size + max(1, self.max_size // 4))
        self._window_start, self._worst, self._full, self._batches, self._events = now, 0.0, 0, 0, 0


class TimeBatcher(Batcher):
    """``mode: time``: every ``interval`` all pending events go out, at most ``max_size`` per batch."""

    def __init__(self, max_size: int, interval_s: float) -> None:
        super().__init__(max_size, interval_s)
        self._tick = time.monotonic() + interval_s
        self._draining = False

    def ready(self, now: float) -> bool:
        if self._draining and self._count:
            return True
        self._draining = bool(self._count) and now >= self._tick
        if now >= self._tick:
            self._tick = now + self.max_wait_s
        return self._draining

    def take(self, now: float, force: bool = False) -> Batch | None:
        batch = super().take(now, force)
        if not self._count:
            self._draining = False  # events that arrive after a drain wait for the next tick
        return batch

    def next_deadline(self) -> float | None:
        return self._tick if self._count else None


def make_batcher(settings: BatchingSettings) -> Batcher:
    """The batcher that ``batching.*`` describes."""
    if not settings.enabled:
        return Batcher(1, 0.0)
    if settings.mode == "time":
        return TimeBatcher(settings.max_size, settings.interval)
    if settings.adaptive:
        return AdaptiveBatcher(settings)
    return Batcher(settings.max_size, settings.max_wait)
