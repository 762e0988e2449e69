"""The checkpoint topic: each worker's committed progress, written inside its transactions.

One compacted topic per gateway (:func:`checkpoint_topic`), one partition, one record per
transaction with key ``w<index>`` and a JSON :class:`WorkerCheckpoint`. Only the gateway writes
it, always last in a transaction, so a checkpoint is visible to ``read_committed`` readers
exactly when the records it covers are.

Reading back (:func:`read_checkpoints`) follows Kafka Connect's ``KafkaBasedLog``: take the high
watermark with a ``read_uncommitted`` consumer, then read from the beginning with a
``read_committed`` one until its position passes that mark. A transaction still open on the
partition (a worker that died mid-transaction) holds the reader until its replacement's
``init_transactions`` aborts it, or until the coordinator does after ``transaction.timeout.ms``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from savegress_gw.errors import GatewayError
from savegress_gw.exactly_once.frames import SINGLE_LANE
from savegress_gw.kafka.errors import describe, settling

VERSION = 1
PROGRESS_LOG_S = 5.0
"""While reading back, how often progress is logged."""


class CheckpointTopicError(GatewayError):
    """The checkpoint topic could not be read, or does not fit this gateway's layout."""


def checkpoint_topic(gateway_id: str) -> str:
    """``savegress.checkpoints.<gateway id>``, characters Kafka does not allow replaced by ``_``."""
    legal = "".join(c if c.isalnum() or c in "._-" else "_" for c in gateway_id)
    return f"savegress.checkpoints.{legal}"[:249]


def transactional_id(gateway_id: str, worker: int) -> str:
    """The stable ``transactional.id`` of worker slot ``worker``: a replacement fences its predecessor."""
    return f"{gateway_id}-w{worker}"


def checkpoint_key(worker: int) -> bytes:
    return f"w{worker}".encode()


@dataclass(frozen=True)
class WorkerCheckpoint:
    """What one worker has committed.

    ``ordinals``: per lane, every event routed to this worker with an ordinal up to it is in
    Kafka. ``ends``/``position``: the last read-batch marker it committed (see
    :mod:`~savegress_gw.exactly_once.frames`). ``workers``, ``lanes`` and ``source`` record the
    layout the events were routed under.
    """

    worker: int
    workers: int
    lanes: int
    source: str
    ordinals: dict[str, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)
    position: Any = None

    def encode(self) -> bytes:
        return orjson.dumps({"v": VERSION, **asdict(self), "ts_ms": int(time.time() * 1000)})

    @classmethod
    def decode(cls, value: bytes) -> "WorkerCheckpoint":
        data = orjson.loads(value)
        if data.pop("v", None) != VERSION:
            raise ValueError(f"unknown checkpoint record version in {value[:200]!r}")
        data.pop("ts_ms", None)
        return cls(**data)


def read_checkpoints(conf: dict[str, Any], topic: str, timeout_s: float, log: Any) -> dict[int, WorkerCheckpoint]:
    """The latest committed checkpoint of every worker slot in ``topic`` (empty for a new topic).

    ``conf`` is the connection part of a librdkafka configuration. Raises
    :class:`CheckpointTopicError` when the topic cannot be read up to its high watermark within
    ``timeout_s`` (a hanging transaction) or holds a record that is not a checkpoint.
    """
    base = {**conf, "group.id": f"savegress-checkpoint-reader-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest"}
    marks = Consumer({**base, "isolation.level": "read_uncommitted"})
    try:
        ends = _end_offsets(marks, topic, timeout_s)
    finally:
        marks.close()
    if ends is None or not any(ends.values()):
        return {}
    reader = Consumer({**base, "isolation.level": "read_committed"})
    try:
        return _read_to(reader, topic, ends, timeout_s, log)
    finally:
        reader.close()


def _end_offsets(client: Consumer, topic: str, timeout_s: float) -> dict[int, int] | None:
    """Partition → high watermark of ``topic`` (None when it does not exist). Retriable errors (a topic
    another worker just created has no partition leader yet: ``NOT_LEADER_FOR_PARTITION``) are retried
    for up to ``timeout_s``; then, or on any other error, :class:`CheckpointTopicError`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            partitions = _partitions(client, topic, timeout_s)
            if partitions is None:
                return None
            return {p: client.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)[1]
                    for p in partitions}
        except KafkaException as exc:
            if not settling(exc) or time.monotonic() > deadline:
                raise CheckpointTopicError(f"checkpoint topic {topic!r}: cannot read its end offsets: "
                                           f"{describe(exc)}") from None
            time.sleep(0.2)


def _partitions(client: Consumer, topic: str, timeout_s: float) -> list[int] | None:
    metadata = client.list_topics(topic, timeout=timeout_s)
    found = metadata.topics.get(topic)
    if found is None or (found.error is not None and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        return None
    if found.error is not None:
        raise KafkaException(found.error)
    return sorted(found.partitions)


def _read_to(reader: Consumer, topic: str, ends: dict[int, int], timeout_s: float,
             log: Any) -> dict[int, WorkerCheckpoint]:
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    latest: dict[int, WorkerCheckpoint] = {}
    started = last_log = time.monotonic()
    while True:
        behind = _behind(reader, topic, ends)
        if not behind:
            return latest
        now = time.monotonic()
        if now - started > timeout_s:
            raise CheckpointTopicError(
                f"checkpoint topic {topic!r}: could not read up to offsets {ends} within {timeout_s:g}s (still behind "
                f"on partitions {behind}); a transaction may be hanging (see kafka-transactions.sh find-hanging)")
        if now - last_log > PROGRESS_LOG_S:
            log.info("waiting for open transactions on the checkpoint topic to finish", topic=topic,
                     behind=behind, waited_s=round(now - started, 1))
            last_log = now
        message = reader.poll(0.2)
        if message is None:
            continue
        if message.error() is not None:
            if message.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise CheckpointTopicError(f"checkpoint topic {topic!r}: {describe(KafkaException(message.error()))}")
        try:
            checkpoint = WorkerCheckpoint.decode(message.value())
        except (ValueError, TypeError) as exc:
            raise CheckpointTopicError(f"checkpoint topic {topic!r} partition {message.partition()} offset "
                                       f"{message.offset()}: not a savegress checkpoint ({exc})") from None
        latest[checkpoint.worker] = checkpoint


def _behind(reader: Consumer, topic: str, ends: dict[int, int]) -> list[int]:
    """Partitions whose read position has not reached their end offset yet."""
    positions = reader.position([TopicPartition(topic, p) for p in ends])
    return [tp.partition for tp in positions if tp.offset < ends[tp.partition]]


def resume_point(checkpoints: dict[int, WorkerCheckpoint], workers: int, lanes: int, source: str,
                 per_lane: bool) -> tuple[Any, int]:
    """Where the source restarts: ``(position, ordinal of the last event before it on lane "")``;
    :func:`resume_marker` gives the ordinals of every lane (priority classes)."""
    position, ends = resume_marker(checkpoints, workers, lanes, source, per_lane)
    return position, ends.get(SINGLE_LANE, 0)


def resume_marker(checkpoints: dict[int, WorkerCheckpoint], workers: int, lanes: int, source: str,
                  per_lane: bool) -> tuple[Any, dict[str, int]]:
    """Where the source restarts: ``(position, {lane: ordinal of its last event before it})``.

    Every worker slot must have committed a checkpoint, else ``(None, {})``: the source's own start.
    A single-stream source (``per_lane`` False) restarts at the position of the lowest marker (its
    lanes are ``""``, or one per priority class: a read batch's marker has every lane's end, and
    each end only grows from one read batch to the next, so the lowest marker is the one with the
    smallest sum of ends) and numbers each lane on from that marker's end; a
    source with its own lanes at ``{lane: lowest end}`` over the lanes every worker has seen (a
    lane missing somewhere starts from the source's own resume point for it, e.g. the consumer
    group's committed offset). Raises :class:`CheckpointTopicError` when the checkpoints were
    written under another layout (worker count, ``parallel.table_parallelism``) or source: events
    would then be routed to workers whose checkpoints do not cover them.
    """
    for checkpoint in checkpoints.values():
        if (checkpoint.workers, checkpoint.lanes, checkpoint.source) != (workers, lanes, source):
            raise CheckpointTopicError(
                f"the checkpoint topic holds progress written with gateway.workers={checkpoint.workers}, "
                f"parallel.table_parallelism={checkpoint.lanes}, source.type={checkpoint.source!r}; this profile has "
                f"{workers}, {lanes}, {source!r}. Exactly-once cannot re-route events already numbered: run with the "
                f"old settings until the source is drained, or delete the checkpoint topic to start over")
    if any(slot not in checkpoints for slot in range(workers)):
        return None, {}
    slots = [checkpoints[slot] for slot in range(workers)]
    if per_lane:
        common = set.intersection(*(set(c.ends) for c in slots))
        return {lane: min(c.ends[lane] for c in slots) for lane in sorted(common)} or None, {}
    lowest = min(slots, key=lambda c: sum(c.ends.values()))
    return lowest.position, dict(lowest.ends)
