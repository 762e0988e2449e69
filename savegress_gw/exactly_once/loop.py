"""The worker's pipeline under exactly-once: ring frames → one Kafka transaction → acknowledgement.

The first frame after a commit begins a transaction; every frame is produced into it as it
arrives (skipping events the committed checkpoint, or the transaction itself, already has), so
librdkafka keeps sending while the transaction lasts. After ``max(batching.max_wait,
TRANSACTION_MIN_WAIT_S)`` or :data:`TRANSACTION_EVENTS` events the worker's checkpoint record goes
last and the transaction commits; only then are its frames acknowledged in the ring, so the
source commits its position after Kafka did. With ``rate_limiting`` each frame takes its events'
tokens before the next is read. An aborted transaction is replayed from the frames kept in
memory, with the profile's retry backoff; a fenced or failed producer ends the worker (its
replacement re-reads the checkpoint).

Events that cannot be produced at all (larger than ``output.max_request_size``, a topic template
giving no legal name) are parked in the dead-letter topic inside the same transaction, or dropped
without one (:mod:`~savegress_gw.exactly_once.parking`). Output records are measured here, as
librdkafka counts them (:func:`~savegress_gw.kafka.record_size.record_size`), against
``output.max_request_size`` and the topic's ``max.message.bytes``
(:class:`~savegress_gw.kafka.topic_limits.TopicLimits`): the producer's own limit is the
dead-letter topic's, and a record the broker refuses would abort the transaction with all its
neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from savegress_gw.components import Batch, Limiter, Status
from savegress_gw.exactly_once.checkpoints import WorkerCheckpoint, checkpoint_key
from savegress_gw.exactly_once.frames import Marker, SequencedFrame, decode_sequenced
from savegress_gw.exactly_once.parking import TransactionalParking
from savegress_gw.exactly_once.producer import TransactionAborted, TransactionalProducer
from savegress_gw.kafka.errors import describe, status_of
from savegress_gw.kafka.headers import HEADER_EVENT_ID, HEADER_OPERATION, HEADER_TABLE, HEADER_TIMESTAMP, \
    event_headers
from savegress_gw.kafka.record_size import RECORD_OVERHEAD, record_size
from savegress_gw.kafka.routing import Router
from savegress_gw.kafka.topic_limits import TopicLimits
from savegress_gw.metrics import ProcessMetrics
from savegress_gw.pipeline import READ_EVENTS
from savegress_gw.pitr.writer import ArchiveWriter
from savegress_gw.profile.settings import RetrySettings
from savegress_gw.retry import Backoff
from savegress_gw.ring import Ring

TRANSACTION_EVENTS = 50_000
"""Most events in one transaction: its fixed cost (markers, EndTxn) is paid per transaction. A
worker also commits once it holds a quarter of its share of ``buffer.size``: events wait in the
ring until their transaction commits, and a fuller buffer would pause the source (measured: 250 ms
transactions ran at 0.4x the rate of 100 ms ones, the source stalling on backpressure)."""
TRANSACTION_MIN_WAIT_S = 0.1
"""How long a transaction stays open for more frames (``batching.max_wait`` when longer), unless full."""
LATENCY_SAMPLES = 8
_HEADER_NAMES_SIZE = sum(len(name) + 2 for name in (HEADER_EVENT_ID, HEADER_OPERATION, HEADER_TABLE, HEADER_TIMESTAMP))


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


class _Progress:
    """What the open transaction will have committed: per-lane ordinals and the last marker."""

    __slots__ = ("ordinals", "ends", "position")

    def __init__(self, committed: WorkerCheckpoint) -> None:
        self.ordinals = dict(committed.ordinals)
        self.ends, self.position = committed.ends, committed.position

    def keep(self, frame: SequencedFrame) -> list[int] | None:
        """Indices of ``frame``'s events not in Kafka yet (committed, or produced in this
        transaction already: a restarted source process re-sends events whose first copies may
        still be in the ring), None when that is all of them; moves the ordinals past them."""
        ordinals = self.ordinals
        lane = frame.one_lane
        if lane is not None and frame.ordinals:  # one lane, ordinals rising in read order
            first, last = frame.ordinals[0], frame.ordinals[-1]
            if first > ordinals.get(lane, 0):
                ordinals[lane] = last
                return None
        keep = []
        for i, ordinal in enumerate(frame.ordinals):
            lane = frame.lane(i)
            if ordinal > ordinals.get(lane, 0):
                ordinals[lane] = ordinal
                keep.append(i)
        return keep

    def mark(self, marker: Marker) -> None:
        """Take a read-batch marker unless it is older than the last (a restarted source process
        re-reads from the lowest marker)."""
        if all(marker.ends.get(lane, 0) >= end for lane, end in self.ends.items()):
            self.ends, self.position = marker.ends, marker.position
            for lane, end in marker.ends.items():
                self.ordinals[lane] = max(self.ordinals.get(lane, 0), end)

    def checkpoint(self, committed: WorkerCheckpoint) -> WorkerCheckpoint:
        return replace(committed, ordinals=dict(self.ordinals), ends=self.ends, position=self.position)


class TransactionalPipeline:
    """One worker's exactly-once loop. Call :meth:`step` until :meth:`settled`.

    Frames are produced into the open transaction as they arrive (librdkafka sends them while the
    transaction lasts); the commit adds the checkpoint record and waits only for the tail.
    """

    def __init__(self, ring: Ring, producer: TransactionalProducer, router: Router, checkpoint: WorkerCheckpoint,
                 checkpoint_topic: str, retry: RetrySettings, metrics: ProcessMetrics, log: Any,
                 max_wait_s: float, limits: TopicLimits, parking: TransactionalParking,
                 max_events: int = TRANSACTION_EVENTS, limiter: Limiter | None = None) -> None:
        self.ring, self.producer, self.router, self.limiter = ring, producer, router, limiter
        self.limits, self.parking = limits, parking
        self.max_events = min(max_events, TRANSACTION_EVENTS)
        self.checkpoint, self.checkpoint_topic = checkpoint, checkpoint_topic
        self.retry, self.metrics, self.log = retry, metrics, log
        self.max_wait_s = max(max_wait_s, TRANSACTION_MIN_WAIT_S)
        self._waiting: list[_Waiting] = []
        """Frames produced into the open transaction (kept to replay it after an abort)."""
        self._produced: list[Batch] = []
        self._progress = _Progress(checkpoint)
        self._events = 0
        self._begun_at = 0.0
        self._skipped = 0
        self._granted_until = 0.0
        """With a rate limiter: no frame is read before this time."""
        self.archive: ArchiveWriter | None = None
        """``pitr.enabled``: an :class:`~savegress_gw.pitr.writer.ArchiveWriter` that gets the events
        produced to the output once the transaction is complete, right before its commit (see :meth:`_commit`)."""

    def finish(self, timeout_s: float) -> None:
        """Last round before the worker exits: commit whatever is waiting."""
        self.step(time.monotonic(), draining=True)

    def settled(self) -> bool:
        return not self.ring.unread and not self._waiting

    def step(self, now: float, draining: bool = False) -> bool:
        """Produce the frames that arrived into the open transaction; commit it when due."""
        self.parking.poll(now)
        worked = self._read(now)
        if self._waiting and (draining or self._events >= self.max_events or now - self._begun_at >= self.max_wait_s):
            self._commit()
            worked = True
        self.producer.poll(0)
        return worked

    def _read(self, now: float) -> bool:
        """Decode frames straight from the ring and produce each at once, until
        :data:`~savegress_gw.pipeline.READ_EVENTS` events (then the step ends, so a backlog is not
        decoded ahead of sending: its events would have left the CPU caches), the transaction is
        full, the rate limiter says wait, or the ring is empty."""
        read = 0
        while read < READ_EVENTS and self._events < self.max_events and now >= self._granted_until:
            frames = self.ring.read_decoded(decode_sequenced)
            if not frames:
                break
            (frame, end), = frames
            n = len(frame.batch)
            if self.limiter is not None:
                self._granted_until = now + self.limiter.acquire(n)
            if not self._waiting:
                self._begun_at = now
                self._begin()
            self._waiting.append(_Waiting(frame, end))
            self._events += n
            read += n or 1
            try:
                self._produce_frame(frame)
            except TransactionAborted as exc:
                self._replay(exc)
        return read > 0

    def _begin(self) -> None:
        self.producer.begin()
        self.parking.begin()
        self._progress = _Progress(self.checkpoint)
        self._produced, self._skipped = [], 0

    def _produce_frame(self, frame: SequencedFrame) -> None:
        keep = self._progress.keep(frame)
        if keep is None:
            self._produced.append(self._produce(frame.batch))
        elif keep:
            self._skipped += len(frame.ordinals) - len(keep)
            batch = frame.batch if len(keep) == len(frame.batch) else frame.batch.take(keep)
            self._produced.append(self._produce(batch))
        else:
            self._skipped += len(frame.ordinals)
        if frame.marker is not None:
            self._progress.mark(frame.marker)

    def _replay(self, cause: TransactionAborted) -> None:
        """The open transaction was aborted: produce every frame of it again in a new one."""
        backoff = Backoff(self.retry)
        while True:
            self.metrics.inc("transactions_total", label="aborted")
            backoff.failed()
            delay = backoff.next_delay(None)
            self.log.warning("transaction aborted; replaying it", reason=str(cause), attempt=backoff.attempts,
                             retry_in_s=round(delay, 3), events=self._events)
            time.sleep(delay)
            try:
                self._begin()
                for waiting in self._waiting:
                    self._produce_frame(waiting.frame)
                return
            except TransactionAborted as exc:
                cause = exc

    def _commit(self) -> None:
        """Add the checkpoint record and commit; then acknowledge the frames.

        With an archive, the transaction's output events are archived first: after the commit a
        crash would leave them in Kafka and the successor would skip them (its checkpoint covers
        them), so the archive would miss them. Archived before the commit, a crash or an aborted
        and replayed transaction can only archive them twice (at least once)."""
        if self.archive is not None:
            self.archive.append(list(chain.from_iterable(batch.payloads for batch in self._produced)))
        while True:
            checkpoint = self._progress.checkpoint(self.checkpoint)
            try:
                self.producer.produce(self.checkpoint_topic, checkpoint.encode(), checkpoint_key(checkpoint.worker),
                                      None, partition=0)
                self.producer.commit()
                break
            except TransactionAborted as exc:
                self._replay(exc)
        self.metrics.inc("transactions_total", label="committed")
        self.parking.committed()
        if self._skipped:
            self.metrics.inc("events_skipped_total", self._skipped)
            self.log.info("skipped events already committed to Kafka", events=self._skipped)
        self.checkpoint = checkpoint
        self._delivered(self._produced)
        self.ring.ack(self._waiting[-1].end, len(self._waiting))
        self._waiting, self._produced, self._events = [], [], 0

    def _produce(self, batch: Batch) -> Batch:
        """Produce ``batch`` into the open transaction (the sink's record format); park or drop what
        Kafka can never take. Returns the events produced to the output."""
        refusals = _Refusals()
        routes = self.router.routes(batch, refusals) if self.router.needed else None
        if refusals.transient is not None:
            self.producer.abort(f"cannot route events yet: {refusals.transient}")
        rejected = {**dict(refusals.rejected), **self._oversized(batch, routes)}
        if rejected or self.parking.holding:
            rejected = self.parking.with_held(batch, rejected)
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
        if not rejected:
            return batch
        self.parking.reject(batch, rejected)
        return batch.take([i for i in range(len(batch)) if i not in rejected])

    def _oversized(self, batch: Batch, routes: list[Any] | None) -> dict[int, str]:
        """Events whose record is larger than its topic takes → the reason. A bound over the batch's
        longest columns settles the common case without looking at each record."""
        limits = self.limits
        if routes is not None:  # learn the limits of topics new to this worker
            for topic in {route[0] for route in routes if route is not None}:
                limits.limit(topic)
        bound = (RECORD_OVERHEAD + _HEADER_NAMES_SIZE + max(map(len, batch.payloads), default=0)
                 + 4 * (max(map(len, batch.keys), default=0) + max(map(len, batch.ids), default=0)
                        + max(map(len, batch.operations), default=0) + max(map(len, batch.tables), default=0)) + 20)
        if bound <= limits.smallest:
            return {}
        oversized = {}
        for i, (key, payload) in enumerate(zip(batch.keys, batch.payloads)):
            if routes is not None and routes[i] is None:
                continue  # not routable: refused already
            topic = routes[i][0] if routes is not None else self.router.topic
            limit, setting = limits.limit(topic)
            size = record_size(key, payload, event_headers(batch, i))
            if size > limit:
                oversized[i] = f"MSG_SIZE_TOO_LARGE: a record of {size} bytes exceeds {setting} (topic {topic})"
        return oversized

    def _delivered(self, batches: list[Batch]) -> None:
        now_ns = time.time_ns()
        for batch in batches:
            n = len(batch)
            self.metrics.inc("events_processed_total", n)
            samples = batch.ingest_ns[::max(1, n // LATENCY_SAMPLES)]
            for ingest in samples:
                self.metrics.observe("event_latency_histogram_seconds", (now_ns - ingest) / 1e9, n / len(samples))

