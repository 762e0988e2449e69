"""Batchers: fixed size/wait, time mode, adaptive sizing, and what make_batcher builds."""

from __future__ import annotations

import time

import pytest

from savegress_gw.batching import AdaptiveBatcher, Batcher, TimeBatcher, make_batcher
from savegress_gw.components import Batch
from savegress_gw.profile.settings import BatchingSettings


def events(start: int, count: int) -> Batch:
    ids = [str(i) for i in range(start, start + count)]
    return Batch([i.encode() for i in ids], ids, ids, ["INSERT"] * count, [""] * count, ["t"] * count,
                 [0] * count, [0] * count)


def drain(batcher: Batcher, now: float, force: bool = False) -> list[list[str]]:
    out = []
    while (batch := batcher.take(now, force=force)) is not None:
        out.append(batch.ids)
    return out


# -------------------------------------------------------------------------------------- fixed


def test_max_size_cuts_batches_in_arrival_order() -> None:
    batcher = Batcher(max_size=4, max_wait_s=100.0)
    batcher.add(events(0, 3), now=0.0)
    assert batcher.take(0.0) is None  # 3 < 4 and no time passed
    batcher.add(events(3, 7), now=0.0)
    assert len(batcher) == 10
    assert drain(batcher, 0.0) == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    assert len(batcher) == 2 and batcher.taken == 8
    assert batcher.take(0.0) is None  # the remainder is not full and has not waited
    assert batcher.take(0.0, force=True).ids == ["8", "9"]  # shutdown: whatever is pending
    assert batcher.taken == 10
    assert batcher.take(0.0, force=True) is None


def test_max_wait_counts_from_the_first_pending_event() -> None:
    batcher = Batcher(max_size=100, max_wait_s=0.5)
    assert batcher.next_deadline() is None
    batcher.add(events(0, 1), now=10.0)
    batcher.add(events(1, 1), now=10.4)  # does not restart the clock
    assert batcher.next_deadline() == 10.5
    assert not batcher.ready(10.49)
    assert batcher.take(10.49) is None
    assert batcher.ready(10.5)
    assert batcher.take(10.5).ids == ["0", "1"]
    assert batcher.next_deadline() is None
    batcher.add(events(2, 1), now=20.0)  # a new batch starts a new clock
    assert batcher.next_deadline() == 20.5


def test_empty_add_does_not_start_the_clock() -> None:
    batcher = Batcher(max_size=10, max_wait_s=1.0)
    batcher.add(Batch.empty(), now=1.0)
    assert batcher.next_deadline() is None and len(batcher) == 0


def test_remainder_after_a_full_batch_is_sent_by_its_own_deadline() -> None:
    batcher = Batcher(max_size=2, max_wait_s=1.0)
    batcher.add(events(0, 3), now=0.0)
    assert batcher.take(0.5).ids == ["0", "1"]
    assert batcher.take(0.5) is None
    assert batcher.next_deadline() == 1.5
    assert batcher.take(1.5).ids == ["2"]


# --------------------------------------------------------------------------------------- time


def test_time_batcher_flushes_everything_on_the_interval_in_max_size_chunks() -> None:
    start = time.monotonic()
    batcher = TimeBatcher(max_size=10, interval_s=100.0)
    batcher.add(events(0, 25), now=start)
    assert batcher.take(start + 50.0) is None  # well before the tick: not even a full batch goes
    tick = batcher.next_deadline()
    assert start + 100.0 <= tick <= time.monotonic() + 100.0
    chunks = drain(batcher, tick)
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert sum(chunks, []) == [str(i) for i in range(25)]
    assert batcher.next_deadline() is None  # nothing pending


def test_time_batcher_next_tick_is_one_interval_later() -> None:
    batcher = TimeBatcher(max_size=10, interval_s=100.0)
    tick = batcher._tick
    batcher.add(events(0, 1), now=tick - 1)
    assert drain(batcher, tick) == [["0"]]
    batcher.add(events(1, 1), now=tick + 50)
    assert batcher.take(tick + 99.0, force=True).ids == ["1"]  # force (shutdown) ignores the interval


def test_time_batcher_waits_for_the_next_tick_after_a_drain() -> None:
    batcher = TimeBatcher(max_size=10, interval_s=100.0)
    tick = batcher._tick
    batcher.add(events(0, 25), now=tick - 1)
    assert [len(c) for c in drain(batcher, tick)] == [10, 10, 5]
    batcher.add(events(25, 3), now=tick + 1)
    assert batcher.take(tick + 1) is None
    assert batcher.next_deadline() == pytest.approx(tick + 100.0)
    assert drain(batcher, tick + 100.0) == [["25", "26", "27"]]


# ------------------------------------------------------------------------------------ adaptive


def adaptive(**overrides) -> AdaptiveBatcher:
    settings = BatchingSettings.model_validate({
        "max_size": 200, "max_wait": "10ms", "adaptive": True,
        "adaptive_config": {"min_size": 50, "max_size": 500, "target_latency": "50ms", "adjustment_interval": "1s"},
        **overrides,
    })
    batcher = make_batcher(settings)
    assert isinstance(batcher, AdaptiveBatcher)
    return batcher


def test_adaptive_starts_within_bounds() -> None:
    assert adaptive().max_size == 200
    assert adaptive(max_size=10).max_size == 50  # raised to min_size
    assert adaptive(max_size=5000).max_size == 500  # lowered to the adaptive max_size
    assert adaptive(target_latency="20ms").target_latency == 0.02  # the flat shorthand wins


def test_adaptive_shrinks_on_high_latency_down_to_min_size() -> None:
    batcher = adaptive()
    now = time.monotonic()
    sizes = []
    for window in range(1, 5):
        batcher.observe_latency(0.2, now + window * 1.0)  # 200ms > 50ms target
        sizes.append(batcher.max_size)
    assert sizes == [100, 50, 50, 50]


def test_adaptive_only_adjusts_once_per_interval() -> None:
    batcher = adaptive()
    now = time.monotonic()
    batcher.observe_latency(0.2, now + 0.1)
    batcher.observe_latency(0.2, now + 0.5)
    assert batcher.max_size == 200  # the window is not over yet
    batcher.observe_latency(0.01, now + 1.01)  # the window's worst latency counts, not the last
    assert batcher.max_size == 100


def test_adaptive_grows_when_batches_are_full_up_to_max_bound() -> None:
    batcher = adaptive()
    now = time.monotonic()
    sizes = []
    for window in range(1, 12):
        at = now + window * 1.0
        batcher.add(events(0, batcher.max_size * 2), now=at)
        assert len(drain(batcher, at)) == 2  # full batches
        batcher.observe_latency(0.01, at)
        sizes.append(batcher.max_size)
    assert sizes[:3] == [250, 312, 390]
    assert sizes[-1] == 500 and max(sizes) == 500


def test_adaptive_keeps_size_when_batches_are_not_full_and_latency_is_fine() -> None:
    batcher = adaptive()
    now = time.monotonic()
    for window in range(1, 4):
        at = now + window * 1.0
        batcher.add(events(0, 10), now=at - 0.5)
        assert batcher.take(at, force=True) is not None  # a small, partial batch
        batcher.observe_latency(0.01, at)
    assert batcher.max_size == 200


def test_adaptive_grows_below_target_throughput() -> None:
    batcher = adaptive(target_throughput=100_000)
    now = time.monotonic()
    batcher.add(events(0, 10), now=now + 0.5)
    assert batcher.take(now + 1.0, force=True) is not None  # partial, and 10 events/s is far below target
    batcher.observe_latency(0.01, now + 1.0)
    assert batcher.max_size == 250


# ------------------------------------------------------------------------------- make_batcher


def test_make_batcher_disabled_sends_every_event_alone() -> None:
    batcher = make_batcher(BatchingSettings(enabled=False, max_size=500))
    assert type(batcher) is Batcher
    assert (batcher.max_size, batcher.max_wait_s) == (1, 0.0)
    batcher.add(events(0, 3), now=0.0)
    assert drain(batcher, 0.0) == [["0"], ["1"], ["2"]]


def test_make_batcher_picks_the_policy() -> None:
    fixed = make_batcher(BatchingSettings(max_size=10, max_wait="10ms"))
    assert type(fixed) is Batcher and (fixed.max_size, fixed.max_wait_s) == (10, 0.01)
    timed = make_batcher(BatchingSettings(mode="time", interval="5m", max_size=10000))
    assert type(timed) is TimeBatcher and (timed.max_size, timed.max_wait_s) == (10000, 300.0)
    assert type(make_batcher(BatchingSettings(adaptive=True))) is AdaptiveBatcher
