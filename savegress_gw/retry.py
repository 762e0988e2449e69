"""Retry delays: ``delay_n = min(initial_delay * multiplier**n, max_delay)``, randomized by ±jitter."""

from __future__ import annotations

import random

from savegress_gw.profile.settings import RetrySettings


_RNG = random.Random()


class Backoff:
    """The delay before each retry of one failing batch, per ``retry.*``.

    ``next_delay(hint)`` returns the delay before the next attempt: a destination's own hint
    (``Retry-After``) wins when it is longer than the computed delay.
    """

    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.attempts = 0
        self._rng = rng or _RNG  # one generator: a Backoff is made per batch, seeding one is not cheap

    @property
    def exhausted(self) -> bool:
        """True once ``max_attempts`` attempts failed (with retry disabled: after the first)."""
        limit = self.settings.max_attempts if self.settings.enabled else 1
        return self.attempts >= limit

    def next_delay(self, hint_s: float | None = None) -> float:
        s = self.settings
        delay = min(s.initial_delay * s.multiplier ** max(self.attempts - 1, 0), s.max_delay)
        delay *= 1 + self._rng.uniform(-s.jitter, s.jitter)
        return max(delay, hint_s or 0.0)

    def failed(self) -> None:
        self.attempts += 1
