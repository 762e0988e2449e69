"""A ``read_committed`` verifier for exactly-once runs (the shape of Kafka's own EOS system tests).

It reads a topic as a transactional consumer sees it, checks that no transaction is left hanging
(last stable offset == high watermark on every partition), and reports per key whether the
sequence numbers arrived in order.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Collection
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition


@dataclass
class Committed:
    """What a ``read_committed`` consumer found in a topic."""

    sequences: list[int] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    """``key: seq a then b`` for every record whose key's previous record had a larger sequence."""


def _ends(config: dict[str, str], topic: str, isolation: str) -> dict[int, int]:
    consumer = Consumer({**config, "group.id": f"ends-{uuid.uuid4().hex[:8]}", "isolation.level": isolation})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in partitions}
    finally:
        consumer.close()


def hanging_partitions(config: dict[str, str], topic: str, timeout: float = 60) -> dict[int, tuple[int, int]]:
    """Partitions whose last stable offset stays below the high watermark for ``timeout`` seconds:
    ``{partition: (lso, hw)}``; empty when every transaction on ``topic`` is decided."""
    deadline = time.monotonic() + timeout
    while True:
        stable, high = _ends(config, topic, "read_committed"), _ends(config, topic, "read_uncommitted")
        open_ = {p: (stable[p], high[p]) for p in high if stable[p] != high[p]}
        if not open_ or time.monotonic() > deadline:
            return open_
        time.sleep(0.5)


def read_committed(config: dict[str, str], topic: str, timeout: float = 120) -> Committed:
    """``after.seq`` of every committed record of ``topic``, and per-key order violations."""
    ends = _ends(config, topic, "read_committed")
    consumer = Consumer({**config, "group.id": f"verify-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    found = Committed()
    last_of_key: dict[bytes, int] = {}
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(topic, p) for p in ends])}
            if all(positions[p] >= ends[p] for p in ends if ends[p] > 0):  # an empty partition has no position
                return found
            assert time.monotonic() < deadline, f"read {len(found.sequences)} records, stuck at {positions} of {ends}"
            for message in consumer.consume(5000, timeout=0.5):
                assert message.error() is None, message.error()
                seq = orjson.loads(message.value())["after"]["seq"]
                found.sequences.append(seq)
                previous = last_of_key.get(message.key())
                if previous is not None and previous > seq:
                    found.order_violations.append(f"{message.key()!r}: seq {previous} then {seq}")
                last_of_key[message.key()] = seq
    finally:
        consumer.close()


def exactly_once_profile(gateway_id: str, brokers: str, topic: str, count: int, rate: int,
                         **overrides: Any) -> dict[str, Any]:
    """A generator → Kafka profile with ``exactly_once`` on, 2 workers, small transactions."""
    profile: dict[str, Any] = {
        "gateway": {"id": gateway_id, "workers": 2, "graceful_timeout": "30s", "heartbeat_timeout": "20s"},
        "source": {"type": "generator", "count": count, "rate": rate, "row_size": 200, "key_space": 5000},
        "output": {"type": "kafka", "brokers": brokers.split(","), "topic": topic, "topics": {"partitions": 4}},
        "exactly_once": {"enabled": True, "transaction_timeout": "10s"},
        "batching": {"max_size": 1000, "max_wait": "50ms"},
        "buffer": {"size": 16384},
    }
    profile.update(overrides)
    return profile


OVERSIZED_BLOB = 30_000
"""Bytes of ``after.blob`` in the events ``produce_sequenced`` makes oversized."""


def _incompressible(seq: int) -> str:
    """:data:`OVERSIZED_BLOB` hex characters that no codec shrinks much (so the broker sees the size too)."""
    return random.Random(seq).randbytes(OVERSIZED_BLOB // 2).hex()


def key_of(seq: int) -> int:
    """The key (``after.id``) of sequence number ``seq`` in ``produce_sequenced``'s topic."""
    return seq % 997


def produce_sequenced(config: dict[str, str], topic: str, count: int, partitions: int = 4,
                      head: tuple[bytes, ...] = (), oversized: Collection[int] = ()) -> None:
    """A keyed input topic of ``count`` envelopes with ``after.seq`` 1..count (keys
    :func:`key_of`), after the raw records ``head`` at the start of partition 0. The events of
    ``oversized`` carry an incompressible ``after.blob`` of :data:`OVERSIZED_BLOB` bytes."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(config)  # kept: a collected client cancels its futures
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    producer = Producer({**config, "enable.idempotence": True, "linger.ms": 20})
    errors: list[Any] = []
    for record in head:
        producer.produce(topic, record, partition=0)
    for seq in range(1, count + 1):
        envelope = {"id": f"in-{seq}", "schema": "public", "table": "users", "operation": "INSERT",
                    "after": {"id": key_of(seq), "seq": seq, **({"blob": _incompressible(seq)} if seq in oversized
                                                                 else {})}}
        while True:
            try:
                producer.produce(topic, orjson.dumps(envelope), key=str(key_of(seq)).encode(),
                                 on_delivery=lambda err, _: errors.append(err) if err else None)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0 and errors == []
