"""A monotonic clock that tests move by hand, patched into a module that imported ``monotonic``."""

from __future__ import annotations

from types import ModuleType

import pytest


class ManualClock:
    """Stands in for ``time.monotonic``: returns :attr:`now`, which the test advances."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def patch_monotonic(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> ManualClock:
    """Replace ``module.monotonic`` with a :class:`ManualClock` for the test and return it."""
    clock = ManualClock()
    monkeypatch.setattr(module, "monotonic", clock)
    return clock
