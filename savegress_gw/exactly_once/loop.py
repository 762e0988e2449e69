"""The worker's pipeline under exactly-once: ring frames → one Kafka transaction → acknowledgement.

A transaction takes the frames waiting in the ring, up to :data:`TRANSACTION_EVENTS` events or
``max(batching.max_wait, TRANSACTION_MIN_WAIT_S)`` after the first of them arrived (then waits for
the rate limiter to grant that many events, when ``rate_limiting`` is on), produces their
events (skipping those the committed checkpoint already covers), then this worker's checkpoint
record, and commits. Only then are the frames acknowledged in the ring, so the source commits its
position after Kafka did. An aborted transaction is replayed from the frames still in memory,
with the profile's retry backoff; a fenced or failed producer ends the worker (its replacement
re-reads the checkpoint).

Events that cannot be produced at all (larger than ``output.max_request_size``, a topic template
giving no legal name) are dropped, counted under ``events_dropped_total{reason="rejected"}`` and
logged by id, as the at-least-once pipeline does without a dead-letter queue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from savegress_gw.components import Batch, Limiter, Status
from savegress_gw.exactly_once.checkpoints import WorkerCheckpoint, checkpoint_key
from savegress_gw.exactly_once.frames import SequencedFrame, decode_sequenced
from savegress_gw.exactly_once.producer import TransactionAborted, TransactionalProducer
from savegress_gw.kafka.errors import describe, status_of
from savegress_gw.kafka.headers import HEADER_EVENT_ID, HEADER_OPERATION, HEADER_TABLE, HEADER_TIMESTAMP
from savegress_gw.kafka.routing import Router
from savegress_gw.metrics import ProcessMetrics
from savegress_gw.profile.settings import RetrySettings
from savegress_gw.retry import Backoff
from savegress_gw.ring import Ring

TRANSACTION_EVENTS = 20_000
"""Most events in one transaction: its fixed cost (markers, EndTxn) is paid per transaction."""
TRANSACTION_MIN_WAIT_S = 0.1
"""A transaction waits at least this long for frames (``batching.max_wait`` when longer)."""
LATENCY_SAMPLES = 8


@dataclass
class _Waiting:
    frame: SequencedFrame
    end: int
    """Ring offset after the frame, for the acknowledgement."""


class _Refusals:
    """Collects the events a :class:`~savegress_gw.kafka.routing.Router` could not route."""

    def __init__(self) -> None:
        self.rejected: list[tuple[int, str]] = []
        self.transient: str | None = None

    def fail_with(self, index: int, status: Status, code: str, message: str) -> None:
        if status is Status.REJECTED:
            self.rejected.append((index, f"{code}: {message}"))
        else:
            self.transient = f"{code}: {message}"


class TransactionalPipeline:
    """One worker's exactly-once loop. Call :meth:`step` until :meth:`settled`."""

    def __init__(self, ring: Ring, producer: TransactionalProducer, router: Router, checkpoint: WorkerCheckpoint,
                 checkpoint_topic: str, retry: RetrySettings, metrics: ProcessMetrics, log: Any,
                 max_wait_s: float, limiter: Limiter | None = None) -> None:
        self.ring, self.producer, self.router, self.limiter = ring, producer, router, limiter
        self.checkpoint, self.checkpoint_topic = checkpoint, checkpoint_topic
        self.retry, self.metrics, self.log = retry, metrics, log
        self.max_wait_s = max(max_wait_s, TRANSACTION_MIN_WAIT_S)
        self._waiting: list[_Waiting] = []
        self._events = 0
        self._first_at = 0.0
        self._granted_until: float | None = None
        """With a rate limiter: the waiting events were granted, to be sent at this time."""

    def finish(self, timeout_s: float) -> None:
        """Last round before the worker exits: commit whatever is waiting."""
        self.step(time.monotonic(), draining=True)

    def settled(self) -> bool:
        return not self.ring.unread and not self._waiting

    def step(self, now: float, draining: bool = False) -> bool:
        """Read frames; run a transaction when one is due. True if anything happened."""
        worked = self._read(now)
        due = draining or self._events >= TRANSACTION_EVENTS or now - self._first_at >= self.max_wait_s
        if self._waiting and due and self._rate_allows(now):
            self._transact()
            self._granted_until = None
            worked = True
        self.producer.poll(0)
        return worked

    def _rate_allows(self, now: float) -> bool:
        """Ask the rate limiter once for the waiting events; True once they may be sent."""
        if self.limiter is None:
            return True
        if self._granted_until is None:
            self._granted_until = now + self.limiter.acquire(self._events)
        return now >= self._granted_until

    def _read(self, now: float) -> bool:
        if self._events >= TRANSACTION_EVENTS or self._granted_until is not None:
            return False
        frames = self.ring.read(max_frames=64)
        for frame in frames:
            sequenced = decode_sequenced(frame.payload)
            if not self._waiting:
                self._first_at = now
            self._waiting.append(_Waiting(sequenced, frame.end))
            self._events += len(sequenced.batch)
        return bool(frames)

    def _transact(self) -> None:
        backoff = Backoff(self.retry)
        while True:
            try:
                self.producer.begin()
                checkpoint, produced = self._produce_all()
                self.producer.produce(self.checkpoint_topic, checkpoint.encode(),
                                      checkpoint_key(checkpoint.worker), None, partition=0)
                self.producer.commit()
                break
            except TransactionAborted as exc:
                self.metrics.inc("transactions_total", label="aborted")
                backoff.failed()
                delay = backoff.next_delay(None)
                self.log.warning("transaction aborted; replaying it", reason=str(exc), attempt=backoff.attempts,
                                 retry_in_s=round(delay, 3))
                time.sleep(delay)
        self.metrics.inc("transactions_total", label="committed")
        self.checkpoint = checkpoint
        self._delivered(produced)
        self.ring.ack(self._waiting[-1].end, len(self._waiting))
        self._waiting, self._events = [], 0

    def _produce_all(self) -> tuple[WorkerCheckpoint, list[Batch]]:
        """Produce every waiting event the checkpoint does not cover; the checkpoint after them."""
        before = self.checkpoint
        ordinals = dict(before.ordinals)
        ends, position = before.ends, before.position
        produced = []
        skipped = 0
        for waiting in self._waiting:
            frame = waiting.frame
            keep = []
            for i, ordinal in enumerate(frame.ordinals):
                # Covered by what is committed or produced in this transaction already: a restarted
                # source process re-sends events whose first copies may still be in the ring.
                lane = frame.lane(i)
                if ordinal > ordinals.get(lane, 0):
                    ordinals[lane] = ordinal
                    keep.append(i)
            skipped += len(frame.ordinals) - len(keep)
            if keep:
                batch = frame.batch if len(keep) == len(frame.batch) else frame.batch.take(keep)
                self._produce(batch)
                produced.append(batch)
            marker = frame.marker
            if marker is not None and all(marker.ends.get(lane, 0) >= end for lane, end in ends.items()):
                # not older than the last one (a restarted source process re-reads from the lowest marker)
                ends, position = marker.ends, marker.position
                for lane, end in ends.items():
                    ordinals[lane] = max(ordinals.get(lane, 0), end)
        if skipped:
            self.metrics.inc("events_skipped_total", skipped)
            self.log.info("skipped events already committed to Kafka", events=skipped)
        return replace(before, ordinals=ordinals, ends=ends, position=position), produced

    def _produce(self, batch: Batch) -> None:
        """Produce ``batch`` into the open transaction (the sink's record format); drop what Kafka can never take."""
        refusals = _Refusals()
        routes = self.router.routes(batch, refusals) if self.router.needed else None
        if refusals.transient is not None:
            self.producer.abort(f"cannot route events yet: {refusals.transient}")
        rejected = dict(refusals.rejected)
        produce = self.producer.client.produce
        topic, partition = self.router.topic, -1
        stamp_at, stamp_header = None, ("", "")  # events of one read share their time
        for i, (payload, key, id_, op, table, stamp) in enumerate(zip(
                batch.payloads, batch.keys, batch.ids, batch.operations, batch.tables, batch.timestamps_ms)):
            if rejected and i in rejected:
                continue
            if routes is not None:
                topic, partition = routes[i]
            if stamp != stamp_at:
                stamp_at, stamp_header = stamp, (HEADER_TIMESTAMP, str(stamp))
            headers = [(HEADER_EVENT_ID, id_), (HEADER_OPERATION, op), (HEADER_TABLE, table), stamp_header]
            try:  # positional: keyword arguments cost ~0.6 us a record in confluent-kafka's argument parsing
                produce(topic, payload, key, partition, None, None, 0, headers)
            except (BufferError, KafkaException):  # the careful path: waits for room, tells errors apart
                try:
                    self.producer.produce(topic, payload, key, headers, partition)
                except KafkaException as exc:
                    if exc.args and isinstance(exc.args[0], KafkaError) and status_of(exc.args[0]) is Status.REJECTED:
                        rejected[i] = describe(exc)
                    else:
                        self.producer.abort(f"produce failed: {describe(exc)}")
        for i, reason in rejected.items():
            self.metrics.inc("events_dropped_total", label="rejected")
            self.log.error("event cannot be produced to Kafka; dropped (exactly-once runs without a dead-letter "
                           "queue)", event_id=batch.ids[i], reason=reason)

    def _delivered(self, batches: list[Batch]) -> None:
        now_ns = time.time_ns()
        for batch in batches:
            n = len(batch)
            self.metrics.inc("events_processed_total", n)
            samples = batch.ingest_ns[::max(1, n // LATENCY_SAMPLES)]
            for ingest in samples:
                self.metrics.observe("event_latency_histogram_seconds", (now_ns - ingest) / 1e9, n / len(samples))

