"""``backpressure.strategy: adaptive_throttle``: slow the source down instead of stopping it."""

from __future__ import annotations

from typing import Callable

from pydantic import Field, model_validator

from savegress_gw import Backpressure, ComponentConfig, Context, hookimpl
from savegress_gw.units import Duration


class ThrottleOptions(ComponentConfig):
    min_rate: int = Field(100, ge=1)
    """Slowest read rate, events/s, however full the buffer stays."""
    max_rate: int = Field(100_000, ge=1)
    """Rate the throttle recovers to; at it (and released) the source is not limited at all."""
    adjustment_interval: Duration = Field(0.1, gt=0)
    """How often the rate is re-evaluated."""

    @model_validator(mode="after")
    def _ordered(self) -> "ThrottleOptions":
        if self.min_rate > self.max_rate:
            raise ValueError(f"min_rate ({self.min_rate}) must not exceed max_rate ({self.max_rate})")
        return self


class AdaptiveThrottleBackpressure(Backpressure):
    """While engaged, the source reads at a rate that adapts to the buffer, never stops it.

    Every ``throttle.adjustment_interval`` while engaged the rate drops to three quarters (not below
    ``min_rate``); once released it grows by a quarter per interval back to ``max_rate``, where
    the limit is lifted. Reads are paced by a token bucket holding one interval's worth of events.
    A full buffer still blocks the source (overflow policy), so nothing is dropped.
    """

    name = "adaptive_throttle"
    action = "throttle"

    class Config(ComponentConfig):
        throttle: ThrottleOptions = ThrottleOptions()

    def open(self, context: Context) -> None:
        super().open(context)
        self.rate = float(self.config.throttle.max_rate)
        self._tokens = 0.0
        self._last: float | None = None
        self._adjusted_at: float | None = None

    def read_allowance(self, now: float) -> float | None:
        options = self.config.throttle
        if self._adjusted_at is None or now - self._adjusted_at >= options.adjustment_interval:
            self._adjusted_at = now
            factor = 0.75 if self.engaged else 1.25
            self.rate = min(options.max_rate, max(options.min_rate, self.rate * factor))
        if not self.engaged and self.rate >= options.max_rate:
            self._last = None
            return None
        if self._last is not None:
            capacity = max(1.0, self.rate * options.adjustment_interval)
            self._tokens = min(capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return self._tokens

    def consumed(self, count: int) -> None:
        self._tokens -= count


@hookimpl
def gw_register_components(register: Callable[[type[Backpressure]], None]) -> None:
    register(AdaptiveThrottleBackpressure)
