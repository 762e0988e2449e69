"""The Kafka dead-letter topic as a store: its records read back as entries, and removing them.

**Records.** One per parked event (written by the ``kafka`` dead-letter queue plugin): the
event's key and JSON envelope, the savegress event headers and the ``savegress-dlq-*`` headers
below. An entry's id is ``p<partition>:<offset>``, e.g. ``p3:1042``.

**Removing.** A Kafka record cannot be deleted on its own, so removal has two parts:

1. a *removal marker* per entry in the companion topic ``<topic>.removed`` (one partition,
   ``cleanup.policy=compact``, created at the first removal): key ``<partition>:<offset>``,
   value ``{"removed_at": ..., "why": ...}``. Readers skip entries that have a marker. Markers
   are produced idempotently with ``acks=all`` and a removal returns only once all are
   acknowledged, so a removed entry never comes back;
2. then, per partition, the run of removed entries at the start of the log is cut off with
   ``AdminClient.delete_records`` (the partition's low-water mark moves to its oldest live
   entry): the broker frees the space, and every consumer of the topic, not only this one, stops
   seeing those records. The markers below the new low-water mark are then tombstoned, so
   compaction drops them too. A cluster that refuses ``delete_records`` (ACLs) leaves the records
   in place, hidden by their markers, with a warning.

The topic's own ``retention.ms`` still applies: the broker may delete old entries by age before
anyone replays or purges them.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Iterator, Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from structlog.typing import FilteringBoundLogger

from savegress_gw.deadletter.records import DeadLetter
from savegress_gw.envelope import now_iso
from savegress_gw.errors import GatewayError
from savegress_gw.kafka.errors import settling
from savegress_gw.kafka.headers import HEADER_EVENT_ID, HEADER_OPERATION, HEADER_TABLE, HEADER_TIMESTAMP
from savegress_gw.kafka.topics import TopicOptions, create_topic

H_REASON = "savegress-dlq-reason"
H_ERROR_CLASS = "savegress-dlq-error-class"
H_ATTEMPTS = "savegress-dlq-attempts"
H_FIRST_FAILURE = "savegress-dlq-first-failure"
H_LAST_FAILURE = "savegress-dlq-last-failure"
H_ORIGIN = "savegress-dlq-origin"
H_ORIGINAL_TOPIC = "savegress-dlq-original-topic"
MARKERS_SUFFIX = ".removed"
"""The removal markers of topic ``T`` are in topic ``T.removed``."""
_RECORD_ID = re.compile(r"p(\d+):(\d+)")
_LABEL = "kafka dead-letter topic"
_RETRY_PAUSE_S = 0.1


class TopicStoreError(GatewayError):
    """The dead-letter topic cannot be read or changed (missing topic, unreachable cluster, refused write)."""


def record_id(partition: int, offset: int) -> str:
    return f"p{partition}:{offset}"


def parse_record_id(entry_id: str) -> tuple[int, int]:
    """``(partition, offset)`` of an entry id; ValueError when it is not one."""
    match = _RECORD_ID.fullmatch(entry_id)
    if match is None:
        raise ValueError(f"{entry_id!r} is not a Kafka dead-letter entry id (expected p<partition>:<offset>)")
    return int(match[1]), int(match[2])


def _within(low: int, high: int, offsets: list[int]) -> tuple[int, int]:
    """The part of ``low..high`` that holds ``offsets`` (empty when there are none)."""
    return (max(low, min(offsets)), min(high, max(offsets) + 1)) if offsets else (low, low)


def _marker_location(message: Any) -> tuple[int, int] | None:
    """``(partition, offset)`` of the entry a removal marker is about; None if it is not a marker of ours."""
    try:
        partition, offset = map(int, message.key().decode().split(":"))
    except (AttributeError, ValueError):
        return None
    return partition, offset


@dataclass
class _KeyIndex:
    """What :meth:`TopicStore.parked_keys` read so far: per partition the entries not known to be
    removed (offset → (key, event id), in offset order) and the offset reading continues at; the
    removal markers' entries and where reading each markers partition continues."""

    entries: dict[int, dict[int, tuple[str, str]]] = field(default_factory=dict)
    entries_next: dict[int, int] = field(default_factory=dict)
    removed: set[tuple[int, int]] = field(default_factory=set)
    markers_next: dict[int, int] = field(default_factory=dict)


class TopicStore:
    """Reads and removes the entries of a Kafka dead-letter topic (see the module docstring).

    ``conf`` is the librdkafka connection (bootstrap servers, security); each call opens and
    closes its own clients, so a store may be used from any thread, one call at a time. It keeps
    the removal markers it has read (and, for :meth:`parked_keys`, the entries' keys) and reads
    on from there at the next call. Reads see
    committed records only, up to the high-water mark at the call: records of transactions still
    open then (exactly-once workers park in transactions) are waited for, at most ``timeout_s``
    without progress, so no committed entry behind an open transaction is missed.
    Records without the dead-letter headers are skipped, logged once and counted in :attr:`corrupt`.
    """

    def __init__(self, topic: str, conf: dict[str, Any], log: FilteringBoundLogger | None = None,
                 timeout_s: float = 30.0) -> None:
        self.topic, self.markers = topic, topic + MARKERS_SUFFIX
        self._conf, self._timeout = dict(conf), timeout_s
        self._log = log or structlog.get_logger().bind(dlq=topic)
        self.corrupt = 0
        self._reported: set[tuple[int, int]] = set()
        self._index = _KeyIndex()

    @property
    def location(self) -> str:
        return f"topic {self.topic!r} on {self._conf.get('bootstrap.servers', '?')}"

    # ------------------------------------------------------------------ reading

    def entries(self, ids: Iterable[str] | None = None) -> Iterator[DeadLetter]:
        """Live entries, partition by partition in offset order (each key's entries in parking
        order), as of this call. With ``ids``: those entries; unknown or removed ones are logged
        and skipped. Raises ValueError for a string that is not an entry id, TopicStoreError when
        the topic cannot be read."""
        wanted = None if ids is None else {parse_record_id(i) for i in ids}
        removed = self._removed()
        ranges = self._ranges()
        if wanted is not None:
            for partition, offset in sorted(wanted):
                low, high = ranges.get(partition, (0, 0))
                if (partition, offset) in removed or not low <= offset < high:
                    self._log.warning("dead-letter entry not found (removed, replayed or purged)",
                                      id=record_id(partition, offset))
            ranges = {p: _within(low, high, [o for q, o in wanted if q == p]) for p, (low, high) in ranges.items()}
        for partition, offset, message in self._read(self.topic, ranges):
            if (partition, offset) in removed or (wanted is not None and (partition, offset) not in wanted):
                continue
            entry = self._entry(message)
            if entry is not None:
                yield entry

    def get(self, entry_id: str) -> DeadLetter:
        """The live entry ``entry_id``; KeyError when there is none, ValueError for a malformed id."""
        for entry in self.entries([entry_id]):
            return entry
        raise KeyError(entry_id)

    def count(self) -> int:
        """Live entries right now. Read, not computed from offsets: a transactional writer (the
        exactly-once workers) leaves commit markers and aborted records between the entries."""
        return sum(1 for _ in self.entries())

    def parked_keys(self) -> dict[str, str]:
        """Every key with a live entry → the event id of its oldest one, as of this call.

        Incremental (``preserve_order`` asks every few seconds, and a dead-letter topic may hold
        hundreds of thousands of entries): the store keeps the keys of the entries and the removal
        markers it read before and reads only what was appended since. Entries below a partition's
        low-water mark (cut by a removal, or by retention) are forgotten; a topic found shorter than
        what was read (deleted and created again) is read again from its start."""
        index = self._index
        removed = self._removed()
        for partition, (low, high) in self._ranges().items():
            known = index.entries.setdefault(partition, {})
            start = index.entries_next.get(partition, low)
            if high < start:
                known.clear()
                start = low
            for offset in [offset for offset in known if offset < low]:
                del known[offset]
            start = max(start, low)
            for _, offset, message in self._read(self.topic, {partition: (start, high)}):
                entry = self._entry(message)
                if entry is not None and (partition, offset) not in removed:
                    known[offset] = (entry.key, entry.event_id)
            index.entries_next[partition] = max(start, high)
        keys: dict[str, str] = {}
        for partition, known in sorted(index.entries.items()):
            for offset, (key, event_id) in known.items():  # in offset order: read in order, appended
                if (partition, offset) not in removed:
                    keys.setdefault(key, event_id)
        return keys

    def _read_new_markers(self, index: _KeyIndex) -> None:
        """Apply the removal markers appended since the last call (all of them when the markers
        topic is shorter than what was read: deleted and created again). A removed entry leaves the
        index for good: a marker is tombstoned only once its entry is below the low-water mark."""
        for partition, (low, high) in self._ranges(self.markers).items():
            start = index.markers_next.get(partition, low)
            if high < start:
                index.removed.clear()
                start = low
            start = max(start, low)
            for _, _, message in self._read(self.markers, {partition: (start, high)}):
                location = _marker_location(message)
                if location is None:
                    continue
                if message.value() is None:
                    index.removed.discard(location)
                else:
                    index.removed.add(location)
                    index.entries.get(location[0], {}).pop(location[1], None)
            index.markers_next[partition] = max(start, high)

    # ------------------------------------------------------------------ removing

    def remove(self, ids: Iterable[str], why: str = "removed") -> int:
        """Durably remove the entries ``ids`` (unknown or already removed ones are ignored);
        return how many were removed. Raises TopicStoreError when a marker is not acknowledged."""
        locations = {parse_record_id(i) for i in ids}
        if not locations:
            return 0
        removed = self._removed()
        ranges = self._ranges()
        victims = sorted((p, o) for p, o in locations - removed
                         if ranges.get(p, (0, 0))[0] <= o < ranges.get(p, (0, 0))[1])
        if victims:
            self._ensure_markers_topic()
            value = orjson.dumps({"removed_at": now_iso(), "why": why})
            self._produce_markers([(f"{p}:{o}".encode(), value) for p, o in victims])
        self._cut(ranges, removed | set(victims))
        return len(victims)

    def purge(self, older_than_seconds: float) -> int:
        """Remove every entry parked more than ``older_than_seconds`` ago; return how many."""
        cutoff = time.time_ns() // 1_000_000 - int(older_than_seconds * 1000)
        return self.remove([e.id for e in self.entries() if e.parked_ms < cutoff], why="purged")

    def _cut(self, ranges: dict[int, tuple[int, int]], removed: AbstractSet[tuple[int, int]]) -> None:
        """Move each partition's low-water mark past its leading removed entries; tombstone their markers."""
        cuts: list[TopicPartition] = []
        below: list[tuple[int, int]] = []
        for partition, (low, high) in ranges.items():
            first_live = self._first_live(partition, low, high, removed)
            if first_live > low:
                cuts.append(TopicPartition(self.topic, partition, first_live))
            below.extend((p, o) for p, o in removed if p == partition and o < first_live)
        if cuts:
            admin = AdminClient(self._conf)
            try:
                futures = admin.delete_records(cuts, request_timeout=self._timeout)
                for future in futures.values():
                    future.result(timeout=self._timeout + 5)
            except Exception as exc:  # no permission, or an old broker: the markers still hide them
                self._log.warning("could not delete removed dead-letter records (they stay hidden by their "
                                  "removal markers)", topic=self.topic, error=f"{type(exc).__name__}: {exc}")
                return
        if below:  # below the low-water mark now: compaction may drop their markers
            self._produce_markers([(f"{p}:{o}".encode(), None) for p, o in below])

    def _first_live(self, partition: int, low: int, high: int, removed: AbstractSet[tuple[int, int]]) -> int:
        """The offset of the partition's first entry without a marker (``high`` when there is none):
        read, since transaction markers and aborted records lie between entries too."""
        if low >= high or (partition, low) not in removed:
            return low
        for _, offset, _ in self._read(self.topic, {partition: (low, high)}):
            if (partition, offset) not in removed:
                return offset
        return high

    # ------------------------------------------------------------------ clients

    def _consumer(self, isolation: str = "read_committed") -> Consumer:
        return Consumer({**self._conf, "group.id": f"savegress-dlq-reader-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "auto.offset.reset": "earliest", "isolation.level": isolation})

    def _ranges(self, topic: str | None = None) -> dict[int, tuple[int, int]]:
        """Partition → (low-water mark, high-water mark) of ``topic`` (default: the dead-letter topic).
        The high-water mark includes records of open transactions (a ``read_committed`` client
        would be told the last stable offset instead)."""
        topic = topic or self.topic
        consumer = self._consumer(isolation="read_uncommitted")
        try:
            try:
                metadata = consumer.list_topics(topic, timeout=self._timeout)
            except KafkaException as exc:
                raise TopicStoreError(f"{_LABEL}: cannot reach {self._conf.get('bootstrap.servers')}: {exc}") from None
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                if topic == self.markers:
                    return {}
                error = found.error.str() if found is not None and found.error is not None else "unknown topic"
                raise TopicStoreError(f"{_LABEL}: cannot read topic {topic!r} on "
                                      f"{self._conf.get('bootstrap.servers')}: {error}")
            deadline = time.monotonic() + self._timeout
            return {partition: self._watermarks(consumer, TopicPartition(topic, partition), deadline)
                    for partition in sorted(found.partitions)}
        finally:
            consumer.close()

    def _watermarks(self, consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
        """(low, high) of one partition, asking again on retriable errors until ``deadline``: a topic
        created a moment ago answers NOT_LEADER_FOR_PARTITION until its leader is known."""
        while True:
            try:
                return consumer.get_watermark_offsets(partition, timeout=max(0.1, deadline - time.monotonic()),
                                                      cached=False)
            except KafkaException as exc:
                if not settling(exc) or time.monotonic() >= deadline:
                    raise TopicStoreError(f"{_LABEL}: no offsets for {partition.topic}[{partition.partition}]: "
                                          f"{exc}") from None
                time.sleep(_RETRY_PAUSE_S)

    def _read(self, topic: str, ranges: dict[int, tuple[int, int]]) -> Iterator[tuple[int, int, Any]]:
        """Every record of ``topic`` within ``ranges``, partition by partition in offset order."""
        todo = {p: r for p, r in ranges.items() if r[1] > r[0]}
        if not todo:
            return
        consumer = self._consumer()
        try:
            for partition, (low, high) in sorted(todo.items()):
                consumer.assign([TopicPartition(topic, partition, low)])
                yield from self._drain(consumer, topic, partition, high)
        finally:
            consumer.close()

    def _drain(self, consumer: Consumer, topic: str, partition: int, high: int) -> Iterator[tuple[int, int, Any]]:
        deadline = time.monotonic() + self._timeout
        while True:
            messages = consumer.consume(500, timeout=0.5)
            if not messages and time.monotonic() > deadline:
                raise TopicStoreError(f"{_LABEL}: reading {topic}[{partition}] up to offset {high} took longer "
                                      f"than {self._timeout:g}s")
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if consumer.position([TopicPartition(topic, partition)])[0].offset >= high:
                            return
                        continue  # at the last stable offset: transactions open at the call decide first
                    raise TopicStoreError(f"{_LABEL}: reading {topic}[{partition}]: {error.str()}")
                deadline = time.monotonic() + self._timeout
                if message.offset() >= high:
                    return
                yield partition, message.offset(), message
                if message.offset() >= high - 1:
                    return

    def _removed(self) -> AbstractSet[tuple[int, int]]:
        """Entries with a live removal marker (the store's own set: read it, do not change it)."""
        self._read_new_markers(self._index)
        return self._index.removed

    def _ensure_markers_topic(self) -> None:
        admin = AdminClient(self._conf)
        try:
            create_topic(admin, self.markers, TopicOptions(partitions=1), {"cleanup.policy": "compact"},
                         self._timeout, _LABEL)
        except GatewayError as exc:
            raise TopicStoreError(str(exc)) from None
        except Exception as exc:  # KafkaClientError is a GatewayError; anything else names itself
            raise TopicStoreError(f"{_LABEL}: could not create {self.markers!r}: {exc}") from None

    def _produce_markers(self, records: list[tuple[bytes, bytes | None]]) -> None:
        failures: list[str] = []

        def report(err: KafkaError | None, _message: Any) -> None:
            if err is not None:
                failures.append(f"{err.name()}: {err.str()}")

        producer = Producer({**self._conf, "acks": "all", "enable.idempotence": True,
                             "message.timeout.ms": int(self._timeout * 1000)})
        for key, value in records:
            while True:
                try:
                    producer.produce(self.markers, value, key, on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.1)
        left = producer.flush(self._timeout + 5)
        if left or failures:
            raise TopicStoreError(f"{_LABEL}: {left + len(failures)} of {len(records)} removal markers to "
                                  f"{self.markers!r} not acknowledged: {failures[:3] or 'timed out'}")

    # ------------------------------------------------------------------ records

    def _entry(self, message: Any) -> DeadLetter | None:
        partition, offset = message.partition(), message.offset()
        headers = {name: (value or b"").decode("utf-8", "replace") for name, value in (message.headers() or [])}
        payload = message.value() or b""
        try:
            schema = orjson.loads(payload).get("schema") or ""
            return DeadLetter(
                record_id(partition, offset), headers[HEADER_EVENT_ID], (message.key() or b"").decode(),
                headers[HEADER_TABLE], str(schema), headers[HEADER_OPERATION], payload, "identity",
                headers[H_REASON], headers.get(H_ERROR_CLASS, ""), int(headers[H_ATTEMPTS]),
                headers[H_FIRST_FAILURE], headers[H_LAST_FAILURE], headers.get(H_ORIGIN, ""),
                int(headers[HEADER_TIMESTAMP]),
                where={"topic": self.topic, "partition": partition, "offset": offset,
                       "original_topic": headers.get(H_ORIGINAL_TOPIC, "")})
        except (KeyError, ValueError, AttributeError) as exc:
            if (partition, offset) not in self._reported:
                self._reported.add((partition, offset))
                self.corrupt += 1
                self._log.error("dead-letter record without the savegress headers skipped", topic=self.topic,
                                partition=partition, offset=offset, error=f"{type(exc).__name__}: {exc}")
            return None
