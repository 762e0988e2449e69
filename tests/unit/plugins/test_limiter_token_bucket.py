"""rate_limiting.algorithm: token_bucket, global across processes through shared memory."""

from __future__ import annotations

import time
from typing import Any

import multiprocess as mp
import pytest

from savegress_gw.errors import ProfileError
from savegress_gw.shared import SharedBlock
from savegress_gw.testing import build, make_context, validated
from savegress_gw_plugins.limiters import adaptive, sliding_window, token_bucket
from savegress_gw_plugins.limiters.token_bucket import TokenBucketLimiter
from tests.harness.clock import ManualClock, patch_monotonic

LIMITERS = (token_bucket, sliding_window, adaptive)
LOW_LATENCY = {"algorithm": "token_bucket", "tokens_per_second": 50000, "burst_size": 500}
"""The guide's Low Latency profile block."""


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    return patch_monotonic(monkeypatch, token_bucket)


def limiter(section: dict) -> TokenBucketLimiter:
    built, _ = build("limiter", {"rate_limiting": section}, *LIMITERS)
    assert isinstance(built, TokenBucketLimiter)
    return built


def test_low_latency_block_builds() -> None:
    config = limiter(LOW_LATENCY).config
    assert (config.tokens_per_second, config.burst_size) == (50000, 500)


def test_is_the_default_algorithm_with_reference_defaults() -> None:
    config = limiter({}).config
    assert (config.tokens_per_second, config.burst_size) == (10000, 1000)


def test_off_or_absent_means_no_limiter() -> None:
    assert validated({"rate_limiting": {"enabled": False}}, *LIMITERS).selected("limiter") is None
    assert validated({}, *LIMITERS).selected("limiter") is None


@pytest.mark.parametrize("key,value", [("tokens_per_second", 0), ("burst_size", 0)])
def test_non_positive_settings_are_refused(key: str, value: int) -> None:
    with pytest.raises(ProfileError, match=rf"rate_limiting\.{key}: Input should be greater than"):
        validated({"rate_limiting": {"algorithm": "token_bucket", key: value}}, *LIMITERS)


def test_starts_full_then_refills_at_the_rate(clock: ManualClock) -> None:
    bucket = limiter({"tokens_per_second": 1000, "burst_size": 100})
    assert bucket.acquire(60) == 0.0
    assert bucket.acquire(40) == 0.0
    assert bucket.acquire(10) == pytest.approx(0.010)
    assert bucket.acquire(10) == pytest.approx(0.010), "a refused request takes nothing"
    clock.now += 0.010
    assert bucket.acquire(10) == 0.0
    assert bucket.acquire(0) == 0.0


def test_capacity_caps_the_refill(clock: ManualClock) -> None:
    bucket = limiter({"tokens_per_second": 1000, "burst_size": 100})
    clock.now += 60.0
    assert bucket.acquire(100) == 0.0
    assert bucket.acquire(1) == pytest.approx(0.001)


def test_request_larger_than_burst_passes_when_full_and_leaves_debt(clock: ManualClock) -> None:
    bucket = limiter({"tokens_per_second": 1000, "burst_size": 100})
    assert bucket.acquire(30) == 0.0
    assert bucket.acquire(250) == pytest.approx(0.030), "waits for a full bucket, not for 250 tokens"
    clock.now += 0.030
    assert bucket.acquire(250) == 0.0
    # 150 tokens of debt: the next 10 wait for the debt to be repaid plus 10 more.
    assert bucket.acquire(10) == pytest.approx(0.160)


def test_instances_on_one_shared_block_share_the_bucket(clock: ManualClock) -> None:
    block = SharedBlock(TokenBucketLimiter.shared_slots)
    first, second = (TokenBucketLimiter(TokenBucketLimiter.Config(tokens_per_second=100, burst_size=50))
                     for _ in range(2))
    first.open(make_context(shared=block))
    assert first.acquire(50) == 0.0
    second.open(make_context(shared=block))  # a late opener does not refill the bucket
    assert second.acquire(1) == pytest.approx(0.01)


def admit_for(limit: Any, duration: float, count: int) -> int:
    """Acquire ``count`` at a time for ``duration`` seconds, sleeping the waits; return events admitted."""
    admitted = 0
    deadline = time.monotonic() + duration
    while (now := time.monotonic()) < deadline:
        wait = limit.acquire(count)
        if wait:
            time.sleep(min(wait, deadline - now))
        else:
            admitted += count
    return admitted


def test_measured_rate_matches_the_configuration() -> None:
    bucket = limiter({"tokens_per_second": 5000, "burst_size": 500})
    admitted = admit_for(bucket, 0.5, 20)
    most = 500 + 5000 * 0.5  # the full bucket plus the refill: never more
    assert 0.9 * most <= admitted <= most + 20


RATE, BURST, DURATION = 2000, 200, 0.6


def _drain(block: SharedBlock, ready: Any, start: Any, results: Any) -> None:
    """Child process: open a limiter on ``block``, then acquire for DURATION once ``start`` is set."""
    bucket = TokenBucketLimiter(TokenBucketLimiter.Config(tokens_per_second=RATE, burst_size=BURST))
    bucket.open(make_context(process="worker", shared=block))
    ready.put(True)
    start.wait()
    results.put(admit_for(bucket, DURATION, 10))


def test_two_processes_share_one_bucket() -> None:
    ctx = mp.get_context("spawn")
    block = SharedBlock(TokenBucketLimiter.shared_slots, ctx)
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_drain, args=(block, ready, start, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=30)
        start.set()
        admitted = [results.get(timeout=30) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
    assert all(count > 0 for count in admitted), admitted
    one_bucket = BURST + RATE * DURATION
    # Two private buckets would admit twice as much; the slack above allows for the children
    # seeing `start` a little apart, the slack below for a loaded machine.
    assert 0.7 * one_bucket <= sum(admitted) <= 1.25 * one_bucket, admitted
