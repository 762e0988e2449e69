"""``rate_limiting.algorithm: adaptive``: a rate that follows delivery latency (AIMD).

The rate and its token bucket live in shared memory (``shared_slots``): every worker's
``observe_latency`` steers the same rate, and every worker's ``acquire`` draws from the same bucket.
"""

from __future__ import annotations

from time import monotonic
from typing import Callable

from pydantic import Field, model_validator

from savegress_gw import ComponentConfig, Context, Limiter, hookimpl
from savegress_gw.shared import SharedBlock
from savegress_gw.units import Duration
from savegress_gw_plugins.limiters.token_bucket import fill, refill, take

BURST_SECONDS = 0.1
"""Bucket capacity, in seconds of the current rate."""
DECREASE = 0.5
"""Multiplicative decrease: the rate is halved after an interval whose latency exceeded the target."""
INCREASE = 0.1
"""Additive increase: the rate grows by this fraction of ``max_rate`` after a good interval."""
RATE, ADJUSTED_AT, WORST = 3, 4, 5
"""Slots after the bucket's three: current rate, time of the last adjustment, worst latency since."""


class AdaptiveOptions(ComponentConfig):
    enabled: bool = True
    """Off: the rate stays at ``max_rate`` (a plain token bucket)."""
    min_rate: float = Field(1000, gt=0)
    """Lowest rate, events per second over all workers."""
    max_rate: float = Field(100000, gt=0)
    """Highest rate, and the rate at start."""
    target_latency: Duration = Field(0.1, gt=0)
    """Delivery latency of a batch the rate is steered to stay under."""
    adjustment_interval: Duration = Field(1.0, gt=0)
    """How often the rate is re-tuned (at the first acknowledged batch after each interval)."""

    @model_validator(mode="after")
    def _min_below_max(self) -> "AdaptiveOptions":
        if self.min_rate > self.max_rate:
            raise ValueError(f"min_rate ({self.min_rate:g}) must not exceed max_rate ({self.max_rate:g})")
        return self


class AdaptiveLimiter(Limiter):
    """A token bucket whose rate moves within ``[min_rate, max_rate]`` to hold latency at target.

    Starts at ``max_rate``. Once per ``adjustment_interval``, at an ``observe_latency`` call from
    any worker: if the worst latency observed during the interval exceeded ``target_latency``,
    the rate halves (not below ``min_rate``), else it grows by 10% of ``max_rate`` (not above it).
    The bucket holds ``BURST_SECONDS`` of the current rate; batches larger than that pass when it
    is full and put it in debt, as in the token bucket.
    """

    name = "adaptive"
    shared_slots = 6

    class Config(ComponentConfig):
        adaptive: AdaptiveOptions = AdaptiveOptions()
        """Bounds and steering of the adaptive rate."""

    def open(self, context: Context) -> None:
        self._shared = context.shared if context.shared is not None else SharedBlock(self.shared_slots)
        slots = self._shared.slots
        # time.monotonic() is CLOCK_MONOTONIC on Linux: one system-wide clock, so the times that
        # different processes store in the shared slots are comparable.
        with self._shared.lock:
            now = monotonic()
            if not slots[RATE]:
                slots[RATE], slots[ADJUSTED_AT] = self.config.adaptive.max_rate, now
            fill(slots, now, slots[RATE] * BURST_SECONDS)

    @property
    def rate(self) -> float:
        """The current rate, events per second over all workers."""
        return self._shared.slots[RATE]

    def acquire(self, count: int) -> float:
        if count <= 0:
            return 0.0
        slots = self._shared.slots
        with self._shared.lock:
            rate = slots[RATE]
            return take(slots, monotonic(), rate, rate * BURST_SECONDS, count)

    def observe_latency(self, seconds: float) -> None:
        options = self.config.adaptive
        if not options.enabled:
            return
        slots = self._shared.slots
        with self._shared.lock:
            now = monotonic()
            slots[WORST] = max(slots[WORST], seconds)
            if now - slots[ADJUSTED_AT] < options.adjustment_interval:
                return
            rate = slots[RATE]
            refill(slots, now, rate, rate * BURST_SECONDS)  # settle the bucket at the old rate
            if slots[WORST] > options.target_latency:
                slots[RATE] = max(options.min_rate, rate * DECREASE)
            else:
                slots[RATE] = min(options.max_rate, rate + INCREASE * options.max_rate)
            slots[ADJUSTED_AT], slots[WORST] = now, 0.0


@hookimpl
def gw_register_components(register: Callable[[type[Limiter]], None]) -> None:
    register(AdaptiveLimiter)
