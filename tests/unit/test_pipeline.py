"""The worker pipeline with a real ring, a real batcher and an in-memory sink."""

from __future__ import annotations

import pytest

from savegress_gw.components import ComponentConfig, Limiter, Status
from savegress_gw.pipeline import decode_frame, encode_frame
from tests.harness.pipeline import (
    RETRY, MemoryDeadLetterQueue, MemorySink, errored, events, ids, partly, rejected,
)


def test_frames_round_trip() -> None:
    batch = events(0, 3)
    assert decode_frame(encode_frame(batch)) == batch


def test_columns_of_one_repeated_value_are_framed_once_and_come_back_whole() -> None:
    batch = events(0, 50)
    batch.tables, batch.ingest_ns = ["orders"] * 50, [7] * 50
    batch.timestamps_ms = [1] * 49 + [2]  # one differs: framed as it is
    columns = batch.to_columns()
    assert columns[batch.COLUMNS.index("tables")] == {"repeat": "orders", "times": 50}
    assert columns[batch.COLUMNS.index("ingest_ns")] == {"repeat": 7, "times": 50}
    assert columns[batch.COLUMNS.index("timestamps_ms")] == [1] * 49 + [2]
    assert encode_frame(batch).count(b"orders") == 1
    assert decode_frame(encode_frame(batch)) == batch


def test_everything_is_delivered_in_order_and_acknowledged(make_world) -> None:
    world = make_world(MemorySink())
    for size in (3, 5, 1, 7, 4):
        world.write(size)
    world.run_until_settled()
    assert world.sink.delivered == ids(0, 20)
    assert all(len(send) <= 4 for send in world.sink.sends)
    assert (world.ring.frames_acked, world.ring.acked_offset) == (5, world.ring.head)
    assert world.metric("events_processed_total") == 20
    assert world.metric("batches_sent_total") == len(world.sink.sends) == 5
    assert world.metric("sink_errors_total") == 0
    assert world.metric("event_latency_histogram_seconds_count") == pytest.approx(20)


def test_frames_are_acknowledged_only_when_every_event_in_them_is_delivered(make_world) -> None:
    sink = MemorySink(asynchronous=True)
    world = make_world(sink)
    for _ in range(4):  # frames of 3 events: [0-2] [3-5] [6-8] [9-11]; batches of 4: [0-3] [4-7] [8-11]
        world.write(3)
    world.step(1.0)
    assert sink.sends == [ids(0, 4), ids(4, 8), ids(8, 12)]
    assert world.ring.frames_acked == 0

    sink.complete(2)  # the newest batch first: nothing before it is delivered yet
    world.step(1.0)
    assert (world.ring.frames_acked, world.ring.acked_offset) == (0, 0)

    sink.complete(0)  # events 0-3: frame [0-2] is complete, frame [3-5] is not
    world.step(1.0)
    assert (world.ring.frames_acked, world.ring.acked_offset) == (1, world.frame_ends[0])

    sink.complete(0)  # events 4-7: now 0-11 are all delivered
    world.step(1.0)
    assert (world.ring.frames_acked, world.ring.acked_offset) == (4, world.frame_ends[3])
    assert world.pipeline.settled()
    assert world.metric("events_processed_total") == 12


def test_transaction_parallelism_bounds_the_sends_in_flight(make_world) -> None:
    sink = MemorySink(script={2: errored()}, asynchronous=True)
    world = make_world(sink, max_in_flight=2)
    for _ in range(4):
        world.write(4)  # batches of 4: [0-3] [4-7] [8-11] [12-15]
    world.step(1.0)
    assert sink.sends == [ids(0, 4), ids(4, 8)], "two in flight, the others wait"
    sink.complete(0)
    world.step(1.0)
    assert sink.sends[2:] == [ids(8, 12)]
    sink.complete(0)  # [4-7] failed: its retry waits for room too, newer batches wait behind it
    world.step(1.0)
    assert len(sink.sends) == 3
    world.step(2.0)
    assert sink.sends[3:] == [ids(4, 8)], "the retry goes first once there is room"
    sink.complete(0)
    world.step(3.0)
    assert sink.sends[4:] == [ids(12, 16)]
    while sink.pending:
        sink.complete(0)
    world.run_until_settled()
    assert sorted(sink.delivered) == sorted(ids(0, 16))


def test_sends_completing_out_of_order_still_acknowledge_in_order(make_world) -> None:
    sink = MemorySink(asynchronous=True, auto="lifo")
    world = make_world(sink, max_size=2)
    for _ in range(5):
        world.write(2)
    world.run_until_settled()
    assert sorted(sink.delivered, key=lambda i: int(i[1:])) == ids(0, 10)
    assert sink.delivered != ids(0, 10)  # they really completed out of order
    assert (world.ring.frames_acked, world.ring.used) == (5, 0)


def test_errored_batch_is_retried_after_backoff_before_newer_batches(make_world) -> None:
    sink = MemorySink(script={2: errored()})
    world = make_world(sink)
    world.write(4)
    world.step(1.0)
    world.write(4)
    world.step(1.0)  # the second batch fails
    assert sink.sends == [ids(0, 4), ids(4, 8)]
    assert world.ring.frames_acked == 1

    world.write(4)
    world.step(1.0, times=3)  # the retry is not due yet: nothing newer may overtake it
    world.step(1.0 + 0.0009)
    assert sink.sends == [ids(0, 4), ids(4, 8)]
    assert world.pipeline.idle_deadline() == pytest.approx(1.001)
    assert not world.pipeline.settled()

    world.step(1.0011)  # due: the retry goes first, then the newer batch
    assert sink.sends == [ids(0, 4), ids(4, 8), ids(4, 8), ids(8, 12)]
    assert sink.delivered == ids(0, 12)
    world.step(1.002)
    assert (world.ring.frames_acked, world.ring.used) == (3, 0)
    assert world.metric("sink_errors_total") == 1
    assert world.metric("batches_sent_total") == 4
    assert world.metric("events_processed_total") == 12


def test_backoff_grows_and_a_retry_after_hint_wins(make_world) -> None:
    sink = MemorySink(script={1: errored(), 2: errored(), 3: errored(retry_after_s=5.0)})
    world = make_world(sink)
    world.write(4)
    world.step(0.0)  # attempt 1 fails: next in 1ms
    world.step(0.00099)
    assert len(sink.sends) == 1
    world.step(0.001)  # attempt 2 fails: next in 2ms
    assert len(sink.sends) == 2
    world.step(0.00299)
    assert len(sink.sends) == 2
    world.step(0.003)  # attempt 3 fails with a 5 s hint
    assert len(sink.sends) == 3
    world.step(4.9)
    assert len(sink.sends) == 3
    world.step(5.004)
    assert sink.sends == [ids(0, 4)] * 4
    assert sink.delivered == ids(0, 4)
    assert world.metric("sink_errors_total") == 3


def test_a_sink_that_raises_is_retried(make_world) -> None:
    class Flaky(MemorySink):
        def send(self, batch, done):
            if not self.sends:
                self.sends.append(list(batch.ids))
                raise ConnectionError("socket closed")
            super().send(batch, done)

    world = make_world(Flaky())
    world.write(4)
    world.run_until_settled()
    assert world.sink.sends == [ids(0, 4), ids(0, 4)]
    assert world.sink.delivered == ids(0, 4)
    assert world.metric("sink_errors_total") == 1


def test_errored_sync_send_stops_newer_sends(make_world) -> None:
    sink = MemorySink(script={2: errored()})
    world = make_world(sink)
    world.write(12)  # three batches ready in one step
    world.run_until_settled()
    assert sink.delivered == ids(0, 12)


def test_failed_in_flight_batches_are_retried_in_stream_order(make_world) -> None:
    sink = MemorySink(script={1: errored(), 2: errored()}, asynchronous=True)
    world = make_world(sink)
    world.write(8)
    world.step(1.0)
    assert sink.sends == [ids(0, 4), ids(4, 8)]
    sink.complete(1)  # the newer batch reports its failure first
    sink.complete(0)
    world.step(1.0)
    sink.auto = "fifo"
    world.run_until_settled(start=2.0)
    assert sink.sends[2:] == [ids(0, 4), ids(4, 8)]
    assert sink.delivered == ids(0, 8)


def test_rejected_events_are_dropped_counted_and_acknowledged(make_world) -> None:
    sink = MemorySink(script={2: rejected()})
    world = make_world(sink)
    for _ in range(3):
        world.write(4)
    world.run_until_settled()
    assert sink.sends == [ids(0, 4), ids(4, 8), ids(8, 12)]  # never retried
    assert sink.delivered == ids(0, 4) + ids(8, 12)
    assert world.metric("events_dropped_total", reason="rejected") == 4
    assert world.metric("events_dropped_total", reason="drop_oldest") == 0
    assert world.metric("events_processed_total") == 8
    assert (world.ring.frames_acked, world.ring.used) == (3, 0)


def test_partial_failure_retries_only_the_failed_events(make_world) -> None:
    sink = MemorySink(script={1: partly([1, 3], Status.ERRORED)})
    world = make_world(sink)
    world.write(4)
    world.write(4)
    world.step(1.0)
    assert sink.sends == [ids(0, 4)]  # the newer batch waits behind the retry: per-key order
    assert sink.delivered == ["e0", "e2"]
    assert world.ring.frames_acked == 0  # e1 and e3 are not delivered: frame 1 (and so frame 2) wait
    world.step(2.0)
    assert sink.sends[1:] == [["e1", "e3"], ids(4, 8)]
    assert world.ring.frames_acked == 2
    assert world.metric("events_processed_total") == 8
    assert world.metric("sink_errors_total") == 1


def test_partial_rejection_drops_only_the_failed_events(make_world) -> None:
    sink = MemorySink(script={1: partly([0], Status.REJECTED)})
    world = make_world(sink)
    world.write(4)
    world.run_until_settled()
    assert sink.sends == [ids(0, 4)]
    assert sink.delivered == ids(1, 4)
    assert world.metric("events_dropped_total", reason="rejected") == 1
    assert world.metric("events_processed_total") == 3
    assert world.ring.used == 0


def test_batches_wait_for_max_wait_unless_draining(make_world) -> None:
    sink = MemorySink()
    world = make_world(sink, max_size=10, max_wait=0.5)
    world.write(3)
    world.step(10.0)
    assert sink.sends == []
    assert world.pipeline.idle_deadline() == pytest.approx(10.5)
    world.step(10.49)
    assert sink.sends == []
    world.step(10.5)
    assert sink.sends == [ids(0, 3)]
    world.write(2)
    world.step(11.0, draining=True)
    assert sink.sends == [ids(0, 3), ids(3, 5)]


class Gate(Limiter):
    """A limiter that holds everything until opened."""

    name = "gate"

    def __init__(self) -> None:
        super().__init__(ComponentConfig())
        self.open_ = False
        self.asked: list[int] = []
        self.latencies: list[float] = []

    def acquire(self, count: int) -> float:
        self.asked.append(count)
        return 0.0 if self.open_ else 0.25

    def observe_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)


def test_rate_limiter_holds_batches_until_it_allows(make_world) -> None:
    gate = Gate()
    sink = MemorySink()
    world = make_world(sink, limiter=gate)
    world.write(4)
    world.step(1.0)
    assert (sink.sends, gate.asked) == ([], [4])
    world.step(1.1)  # still inside the wait the limiter asked for: not even asked again
    assert (sink.sends, gate.asked) == ([], [4])
    world.step(1.3)
    assert sink.sends == [] and gate.asked == [4, 4]
    gate.open_ = True
    world.step(1.6)
    assert sink.sends == [ids(0, 4)]
    assert len(gate.latencies) == 1 and gate.latencies[0] >= 0


def test_rejected_events_are_parked_with_reason_and_origin(make_world) -> None:
    dlq = MemoryDeadLetterQueue()
    world = make_world(MemorySink(script={2: partly([1], Status.REJECTED)}), dlq=dlq)
    for _ in range(3):
        world.write(4)
    world.run_until_settled()
    assert dlq.parked == [(["e5"], "some failed", 1, "gw/worker-0")]
    assert world.metric("events_dead_lettered_total") == 1
    assert world.metric("events_dropped_total", reason="rejected") == 0
    assert (world.ring.frames_acked, world.ring.used) == (3, 0)


def test_exhausted_retries_are_parked_only_with_a_dead_letter_queue(make_world) -> None:
    always_failing = {n: errored("down") for n in range(1, 4)}
    dlq = MemoryDeadLetterQueue()
    world = make_world(MemorySink(script=dict(always_failing)), dlq=dlq,
                       retry=RETRY.model_copy(update={"max_attempts": 3}))
    world.write(4)
    world.run_until_settled()
    assert dlq.parked == [(ids(0, 4), "down", 3, "gw/worker-0")]
    assert world.ring.frames_acked == 1

    without = make_world(MemorySink(script=dict(always_failing)), retry=RETRY.model_copy(update={"max_attempts": 3}))
    without.write(4)
    without.run_until_settled()  # no dead-letter queue: it kept retrying until the sink recovered
    assert without.sink.delivered == ids(0, 4)
    assert len(without.sink.sends) == 4


def test_a_failing_dead_letter_queue_keeps_the_events_and_retries(make_world) -> None:
    dlq = MemoryDeadLetterQueue(failures=2)
    world = make_world(MemorySink(script={1: rejected("poison"), 2: rejected("poison"), 3: rejected("poison")}),
                       dlq=dlq)
    world.write(4)
    world.step(1.0)
    assert dlq.parked == [] and world.ring.frames_acked == 0
    world.run_until_settled()
    assert dlq.parked == [(ids(0, 4), "poison", 3, "gw/worker-0")]
    assert world.ring.frames_acked == 1


def test_events_past_the_deadline_are_parked_and_the_rest_delivered(make_world) -> None:
    from savegress_gw.components import Batch

    dlq = MemoryDeadLetterQueue()
    world = make_world(MemorySink(), dlq=dlq)
    world.pipeline.event_deadline_ns = int(5e9)
    old = events(0, 4)
    old.ingest_ns[:2] = [old.ingest_ns[0] - int(60e9)] * 2  # e0 and e1 waited a minute
    world.ring.write(encode_frame(old))
    world.written = 4
    world.write(4)  # e4..e7: fresh
    world.run_until_settled()
    assert [ids_ for ids_, *_ in dlq.parked] == [["e0", "e1"]]
    assert dlq.parked[0][1].startswith("deadline exceeded")
    assert world.sink.delivered == ["e2", "e3"] + ids(4, 8)
    assert world.ring.frames_acked == 2
    assert isinstance(old, Batch)


def test_without_a_dead_letter_queue_expired_events_are_dropped_and_counted(make_world) -> None:
    world = make_world(MemorySink())
    world.pipeline.event_deadline_ns = 1  # everything is late
    world.write(4)
    world.run_until_settled()
    assert world.sink.sends == []
    assert world.metric("events_dropped_total", reason="deadline") == 4
    assert world.ring.frames_acked == 1
