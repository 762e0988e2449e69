"""``dlq.preserve_order``: later events of a key are parked behind its parked event until released.

Pipelines run on the test world of tests/harness/pipeline.py; the held keys' background scan is
replaced by :class:`Scans`, whose scans the test finishes when it wants.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Callable

import structlog

from savegress_gw.deadletter.holds import KeyHolds
from savegress_gw.profile.settings import DlqSection
from tests.harness.pipeline import RETRY, MemoryDeadLetterQueue, MemorySink, errored, partly, rejected
from savegress_gw.components import Status

HELD = "held behind parked event {} (dlq.preserve_order)"


class Scans:
    """Runs the held keys' scans when told to (``finish``), or at once with ``immediate``."""

    def __init__(self, immediate: bool = True) -> None:
        self.immediate = immediate
        self.waiting: list[tuple[Callable[[], dict[str, str]], Future[dict[str, str]]]] = []
        self.started = 0

    def __call__(self, scan: Callable[[], dict[str, str]]) -> Future[dict[str, str]]:
        self.started += 1
        future: Future[dict[str, str]] = Future()
        self.waiting.append((scan, future))
        if self.immediate:
            self.finish()
        return future

    def finish(self) -> None:
        for scan, future in self.waiting:
            try:
                future.set_result(scan())
            except Exception as exc:
                future.set_exception(exc)
        self.waiting.clear()


def holds_for(dlq: MemoryDeadLetterQueue, scans: Scans | None = None, load: bool = True) -> KeyHolds:
    return KeyHolds(dlq, structlog.get_logger(), load=load, run=scans or Scans(), recheck_s=5.0)


def parked_ids(dlq: MemoryDeadLetterQueue) -> list[str]:
    return [event_id for ids, *_ in dlq.parked for event_id in ids]


def test_the_setting_is_off_by_default_and_accepted() -> None:
    assert DlqSection().preserve_order is False
    assert DlqSection(preserve_order=True).preserve_order is True


def test_later_events_of_a_rejected_key_are_parked_behind_it_and_other_keys_flow(make_world) -> None:
    dlq = MemoryDeadLetterQueue()
    world = make_world(MemorySink(script={1: partly([1], Status.REJECTED)}), dlq=dlq, max_size=4,
                       holds=holds_for(dlq))
    world.write(4, keys=["t:a", "t:b", "t:c", "t:d"])  # e1 (key b) is rejected
    world.write(4, keys=["t:b", "t:a", "t:b", "t:c"])
    world.run_until_settled()
    assert world.sink.delivered == ["e0", "e2", "e3", "e5", "e7"]
    assert dlq.parked == [(["e1"], "some failed", 1, "gw/worker-0"),
                          (["e4", "e6"], HELD.format("e1"), 0, "gw/worker-0")]
    assert world.metric("events_dead_lettered_total") == 3
    assert (world.ring.frames_acked, world.ring.used) == (2, 0)


def test_keys_of_a_batch_whose_retries_ran_out_are_held(make_world) -> None:
    dlq = MemoryDeadLetterQueue()
    world = make_world(MemorySink(script={n: errored("down") for n in range(1, 4)}), dlq=dlq, max_size=2,
                       retry=RETRY.model_copy(update={"max_attempts": 3}), holds=holds_for(dlq))
    world.write(2, keys=["t:a", "t:b"])
    world.write(2, keys=["t:c", "t:b"])
    world.write(2, keys=["t:a", "t:d"])
    world.run_until_settled()
    assert world.sink.delivered == ["e2", "e5"]
    assert [(ids, reason) for ids, reason, *_ in dlq.parked] == [
        (["e0", "e1"], "down"), (["e3"], HELD.format("e1")), (["e4"], HELD.format("e0"))]


def test_a_key_is_released_once_the_queue_holds_none_of_its_entries(make_world) -> None:
    dlq = MemoryDeadLetterQueue()
    world = make_world(MemorySink(script={1: rejected()}), dlq=dlq, max_size=1, holds=holds_for(dlq))
    world.write(1, keys=["t:a"])
    world.write(1, keys=["t:a"])
    now = world.run_until_settled(start=0.0)
    assert parked_ids(dlq) == ["e0", "e1"] and world.sink.delivered == []

    dlq.remove(["e0"])  # a replay delivered the blocking event, the held one is still parked
    world.step(now + 10.0)
    world.write(1, keys=["t:a"])
    world.run_until_settled(start=now + 11.0)
    assert parked_ids(dlq) == ["e0", "e1", "e2"] and world.sink.delivered == []

    dlq.remove(["e1", "e2"])
    world.step(now + 30.0)  # the recheck finds no entry of t:a any more
    world.write(1, keys=["t:a"])
    world.run_until_settled(start=now + 31.0)
    assert world.sink.delivered == ["e3"]


def test_a_park_after_the_scan_started_keeps_the_key_held(make_world) -> None:
    dlq = MemoryDeadLetterQueue()
    scans = Scans(immediate=False)
    world = make_world(MemorySink(script={1: rejected()}), dlq=dlq, max_size=1, holds=holds_for(dlq, scans))
    world.write(1, keys=["t:a"])
    world.step(0.0, times=3)  # e0 parked, a scan started
    assert parked_ids(dlq) == ["e0"] and scans.started == 1
    world.write(1, keys=["t:a"])
    world.step(1.0, times=3)  # e1 held and parked while the scan runs
    assert parked_ids(dlq) == ["e0", "e1"]
    dlq.remove(["e0", "e1"])
    scans.finish()  # the scan saw no entry of t:a, but t:a was parked after it started
    world.write(1, keys=["t:a"])
    world.step(2.0, times=3)
    assert parked_ids(dlq) == ["e0", "e1", "e2"] and world.sink.delivered == []


def test_keys_already_in_the_queue_are_held_from_the_start_unless_replaying(make_world) -> None:
    dlq = MemoryDeadLetterQueue()
    dlq.keys = {"old-1": "t:b"}  # parked by an earlier run
    world = make_world(MemorySink(), dlq=dlq, max_size=2, holds=holds_for(dlq))
    world.write(2, keys=["t:a", "t:b"])
    world.run_until_settled()
    assert world.sink.delivered == ["e0"]
    assert dlq.parked == [(["e1"], HELD.format("old-1"), 0, "gw/worker-0")]

    replaying = MemoryDeadLetterQueue()
    replaying.keys = {"old-1": "t:b"}
    replay = make_world(MemorySink(), dlq=replaying, max_size=2, holds=holds_for(replaying, load=False))
    replay.write(2, keys=["t:a", "t:b"])
    replay.run_until_settled()
    assert replay.sink.delivered == ["e0", "e1"]


def test_held_events_wait_while_the_queue_is_down_and_are_parked_once(make_world) -> None:
    dlq = MemoryDeadLetterQueue()
    world = make_world(MemorySink(script={1: rejected()}), dlq=dlq, max_size=2, holds=holds_for(dlq))
    world.write(2, keys=["t:a", "t:x"])
    world.step(0.0, times=3)
    assert parked_ids(dlq) == ["e0", "e1"]
    dlq.failures = 2
    world.write(2, keys=["t:b", "t:a"])  # e3 is held, but the queue is down
    world.write(2, keys=["t:c", "t:d"])
    world.step(1.0, times=3)
    assert world.sink.delivered == [] and world.ring.frames_acked == 1  # nothing overtakes the held event
    world.run_until_settled(start=2.0)
    assert parked_ids(dlq) == ["e0", "e1", "e3"]
    assert world.sink.delivered == ["e2", "e4", "e5"]
    assert (world.ring.frames_acked, world.ring.used) == (3, 0)


def test_a_failing_scan_keeps_the_keys_held(make_world) -> None:
    dlq = MemoryDeadLetterQueue()

    def broken() -> dict[str, str]:
        raise OSError("disk gone")

    world = make_world(MemorySink(script={1: rejected()}), dlq=dlq, max_size=1, holds=holds_for(dlq))
    world.write(1, keys=["t:a"])
    world.step(0.0, times=3)
    dlq.remove(["e0"])
    dlq.parked_keys = broken  # type: ignore[method-assign]
    world.step(10.0, times=2)
    world.write(1, keys=["t:a"])
    world.step(10.0, times=3)
    assert parked_ids(dlq) == ["e0", "e1"] and world.sink.delivered == []
