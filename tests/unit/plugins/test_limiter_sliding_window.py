"""rate_limiting.algorithm: sliding_window, counted in shared sub-buckets."""

from __future__ import annotations

import random
import time

import pytest

from savegress_gw.errors import ProfileError
from savegress_gw.shared import SharedBlock
from savegress_gw.testing import build, make_context, validated
from savegress_gw_plugins.limiters import adaptive, sliding_window, token_bucket
from savegress_gw_plugins.limiters.sliding_window import SlidingWindowLimiter
from tests.harness.clock import ManualClock, patch_monotonic

LIMITERS = (token_bucket, sliding_window, adaptive)
STREAMING = {"algorithm": "sliding_window", "window_size": "1s", "max_requests": 25000}
"""The guide's Streaming profile block."""
WINDOW = 1.25
"""Window of the fake-clock tests: its sub-buckets (0.125 s) are exact in binary floating point."""


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    return patch_monotonic(monkeypatch, sliding_window)


def limiter(section: dict) -> SlidingWindowLimiter:
    built, _ = build("limiter", {"rate_limiting": {"algorithm": "sliding_window", **section}}, *LIMITERS)
    assert isinstance(built, SlidingWindowLimiter)
    return built


def test_streaming_block_builds() -> None:
    config = limiter(STREAMING).config
    assert (config.window_size, config.max_requests) == (1.0, 25000)
    assert limiter({}).config.max_requests == 10000


@pytest.mark.parametrize("key,value,message", [
    ("window_size", "0s", "Input should be greater than 0"),
    ("window_size", "soon", "invalid duration"),
    ("max_requests", 0, "Input should be greater than or equal to 1"),
])
def test_invalid_settings_are_refused(key: str, value: object, message: str) -> None:
    with pytest.raises(ProfileError, match=rf"rate_limiting\.{key}: {message}"):
        validated({"rate_limiting": {"algorithm": "sliding_window", key: value}}, *LIMITERS)


def test_events_leave_the_window_one_sub_bucket_after_it_ends(clock: ManualClock) -> None:
    window = limiter({"window_size": WINDOW, "max_requests": 100})
    clock.now = 1000.05
    assert window.acquire(60) == 0.0
    clock.now = 1000.6
    assert window.acquire(40) == 0.0
    clock.now = 1000.7
    # The 60 events of sub-bucket [1000.0, 1000.125) are counted until 1000.0 + 1.25 + 0.125.
    assert window.acquire(1) == pytest.approx(0.675)
    assert window.acquire(41) == pytest.approx(0.675), "a refused request takes nothing"
    assert window.acquire(61) == pytest.approx(1.175), "needs the 40 of [1000.5, 1000.625) gone too"
    clock.now = 1001.3
    assert window.acquire(1) == pytest.approx(0.075)
    clock.now = 1001.375
    assert window.acquire(60) == 0.0
    assert window.acquire(1) > 0.0
    assert window.acquire(0) == 0.0


def test_request_larger_than_the_limit_passes_alone(clock: ManualClock) -> None:
    window = limiter({"window_size": WINDOW, "max_requests": 100})
    assert window.acquire(150) == 0.0
    assert window.acquire(1) == pytest.approx(WINDOW + 0.125)
    clock.now += WINDOW + 0.125
    assert window.acquire(100) == 0.0
    assert window.acquire(150) == pytest.approx(WINDOW + 0.125), "waits until nothing is counted"


@pytest.mark.parametrize("seed", range(3))
def test_never_more_than_max_in_any_trailing_window(clock: ManualClock, seed: int) -> None:
    rng = random.Random(seed)
    window = limiter({"window_size": WINDOW, "max_requests": 300})
    admitted: list[tuple[float, int]] = []
    start = clock.now
    while clock.now < start + 30:
        count = rng.randint(1, 40)
        wait = window.acquire(count)
        if wait:
            clock.now += wait * rng.choice([0.3, 1.0, 1.0])
        else:
            admitted.append((clock.now, count))
            clock.now += rng.expovariate(100)
    for t, _ in admitted:
        assert sum(c for u, c in admitted if t - WINDOW <= u <= t) <= 300
    per_window = sum(c for _, c in admitted) / 30 * WINDOW
    assert 300 / 1.1 * 0.95 <= per_window <= 300


def test_measured_rate_is_within_the_documented_approximation() -> None:
    window = limiter({"window_size": "100ms", "max_requests": 200})
    admitted = 0
    deadline = time.monotonic() + 1.0
    while (now := time.monotonic()) < deadline:
        wait = window.acquire(10)
        if wait:
            time.sleep(min(wait, deadline - now))
        else:
            admitted += 10
    # A first full window, then between 1/1.1 and 1 times max_requests per window_size; the
    # lower bound leaves room for a loaded machine, the upper one is the guarantee.
    assert 200 + 200 * 10 / 1.1 * 0.75 <= admitted <= 200 + 200 * 10


def test_instances_on_one_shared_block_share_the_window(clock: ManualClock) -> None:
    block = SharedBlock(SlidingWindowLimiter.shared_slots)
    first, second = (SlidingWindowLimiter(SlidingWindowLimiter.Config(window_size=WINDOW, max_requests=50))
                     for _ in range(2))
    first.open(make_context(shared=block))
    second.open(make_context(shared=block))
    assert first.acquire(30) == 0.0
    assert second.acquire(20) == 0.0
    assert first.acquire(1) > 0.0
    assert second.acquire(1) > 0.0
