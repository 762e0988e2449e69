"""``rate_limiting.algorithm: token_bucket``: a refill rate and a burst, shared by every worker.

The bucket lives in shared memory (``shared_slots``), so the limit is global across worker
processes. The module-level functions are the bucket itself; the adaptive limiter reuses them.
"""

from __future__ import annotations

from time import monotonic
from typing import Any, Callable

from pydantic import Field

from savegress_gw import ComponentConfig, Context, Limiter, hookimpl
from savegress_gw.shared import SharedBlock

READY, TOKENS, LAST = range(3)
"""Slots of a bucket: set-up flag, tokens (negative = debt), monotonic time of the last refill."""
SLACK = 1e-9
"""Tokens a request may lack and still pass: float rounding must not turn a wait that was slept
exactly into a second, tiny one."""


def fill(slots: Any, now: float, capacity: float) -> None:
    """Start the bucket full, unless another process already started it. Hold the lock."""
    if not slots[READY]:
        slots[TOKENS], slots[LAST], slots[READY] = capacity, now, 1.0


def refill(slots: Any, now: float, rate: float, capacity: float) -> float:
    """Add the tokens earned at ``rate`` since the last refill, up to ``capacity``. Hold the lock."""
    tokens = min(capacity, slots[TOKENS] + (now - slots[LAST]) * rate)
    slots[TOKENS], slots[LAST] = tokens, now
    return tokens


def take(slots: Any, now: float, rate: float, capacity: float, count: int) -> float:
    """Take ``count`` tokens: 0.0 when taken, else the seconds until they can be. Hold the lock.

    A request passes once ``min(count, capacity)`` tokens are there and takes all ``count``,
    leaving the bucket in debt when ``count`` is larger than ``capacity``: oversized batches pass
    one at a time, and the debt is repaid before anything else passes, so the rate holds.
    """
    tokens = refill(slots, now, rate, capacity)
    need = min(count, capacity)
    if tokens + SLACK < need:
        return (need - tokens) / rate
    slots[TOKENS] = tokens - count
    return 0.0


class TokenBucketLimiter(Limiter):
    """At most ``tokens_per_second`` events per second on average, in bursts of ``burst_size``.

    One token per event; the bucket starts full and is global across worker processes. A batch
    larger than ``burst_size`` passes when the bucket is full and puts it in debt (see :func:`take`).
    """

    name = "token_bucket"
    shared_slots = 3

    class Config(ComponentConfig):
        tokens_per_second: float = Field(10000, gt=0)
        """Refill rate: the sustained limit in events per second, over all workers."""
        burst_size: int = Field(1000, ge=1)
        """Bucket capacity: the most events that pass at once after a quiet period."""

    def open(self, context: Context) -> None:
        self._shared = context.shared if context.shared is not None else SharedBlock(self.shared_slots)
        # time.monotonic() is CLOCK_MONOTONIC on Linux: one system-wide clock, so the times that
        # different processes store in the shared slots are comparable.
        with self._shared.lock:
            fill(self._shared.slots, monotonic(), self.config.burst_size)

    def acquire(self, count: int) -> float:
        if count <= 0:
            return 0.0
        with self._shared.lock:
            return take(self._shared.slots, monotonic(), self.config.tokens_per_second,
                        self.config.burst_size, count)


@hookimpl
def gw_register_components(register: Callable[[type[Limiter]], None]) -> None:
    register(TokenBucketLimiter)
