"""A circuit breaker in front of the sink: stop hammering a destination that keeps failing.

States (``circuit_breaker.*``): **closed** (sends flow) → **open** after ``failure_threshold``
consecutive failures, or — with ``adaptive.enabled`` — when the error rate over the last
``min_samples`` sends reaches ``error_rate_threshold``; **open** (nothing is sent) for ``timeout``
→ **half-open**: at most ``half_open_requests`` probe sends in flight; ``success_threshold``
successes close it, any failure opens it again. Only transient failures (ERRORED) count: a
rejected event says nothing about the destination's health.
"""

from __future__ import annotations

import enum
from collections import deque

from savegress_gw.profile.settings import CircuitBreakerSettings


class State(enum.IntEnum):
    """Exported as the ``savegress_circuit_breaker_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Decides whether a send may start now; fed with the result of every send."""

    def __init__(self, settings: CircuitBreakerSettings) -> None:
        self.settings = settings
        self.state = State.CLOSED
        self.opened_at = 0.0
        self.opens = 0
        self._failures = 0
        self._successes = 0
        self._probes = 0
        self._window: deque[bool] = deque(maxlen=settings.adaptive.min_samples)

    def allow(self, now: float) -> bool:
        """Whether one more send may start now (an open breaker turns half-open after ``timeout``)."""
        if not self.settings.enabled or self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if now - self.opened_at < self.settings.timeout:
                return False
            self.state, self._successes, self._probes = State.HALF_OPEN, 0, 0
        return self._probes < self.settings.half_open_requests

    def sending(self) -> None:
        """A send allowed by :meth:`allow` started (a probe, when half-open)."""
        if self.state is State.HALF_OPEN:
            self._probes += 1

    def reopens_at(self) -> float:
        """When an open breaker lets the first probe through."""
        return self.opened_at + self.settings.timeout

    def succeeded(self, now: float) -> None:
        self._window.append(True)
        self._failures = 0
        if self.state is State.HALF_OPEN:
            self._successes += 1
            self._probes = max(0, self._probes - 1)
            if self._successes >= self.settings.success_threshold:
                self.state = State.CLOSED
                self._window.clear()

    def failed(self, now: float) -> None:
        self._window.append(False)
        self._failures += 1
        if self.state is State.HALF_OPEN or self._failures >= self.settings.failure_threshold or self._rate_tripped():
            self._open(now)

    def _rate_tripped(self) -> bool:
        adaptive = self.settings.adaptive
        if not adaptive.enabled or len(self._window) < adaptive.min_samples:
            return False
        return self._window.count(False) / len(self._window) >= adaptive.error_rate_threshold

    def _open(self, now: float) -> None:
        if self.state is not State.OPEN:
            self.opens += 1
        self.state, self.opened_at, self._probes = State.OPEN, now, 0
