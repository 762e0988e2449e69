"""Consuming from Kafka for the gateway: consumer settings and per-partition offsets.

A consumer position is the plain dict ``{"<topic>:<partition>": <offset of the next record>}``
(JSON and msgpack encodable, so it is checkpointed and handed between processes as is);
:func:`lane` names a partition the way that dict does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import TopicPartition

from savegress_gw.kafka.connection import CALLBACK_KEYS

OWNED_KEYS = {
    "bootstrap.servers": "use source.brokers",
    "group.id": "use source.group_id",
    "auto.offset.reset": "use source.start",
    "enable.auto.commit": "the gateway commits offsets only after delivery",
    "enable.auto.offset.store": "the gateway commits offsets only after delivery",
}
"""librdkafka settings the Kafka source sets itself, and why a pass-through block may not."""


METADATA_REFRESH_MS = 10_000
"""How often the consumer looks for topics created since (a missing topic, a new ``topic_pattern``
match); librdkafka's own default is 5 min."""


def check_passthrough(settings: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``consumer`` pass-through block: no callbacks, none of :data:`OWNED_KEYS`."""
    for key in sorted(settings):
        if key in CALLBACK_KEYS:
            raise ValueError(f"{key} is a callback the gateway sets itself")
        if key in OWNED_KEYS:
            raise ValueError(f"{key} cannot be passed through: {OWNED_KEYS[key]}")
    return settings


def consumer_settings(connection: dict[str, Any], group_id: str, instance_id: str, start: str,
                      passthrough: dict[str, Any]) -> dict[str, Any]:
    """librdkafka settings of an at-least-once consumer: ``connection`` (from ``client_settings``),
    the group, a static member id, manual offset commits only, committed transactions only, new
    topics found within :data:`METADATA_REFRESH_MS`, then ``passthrough``.

    ``instance_id`` (``group.instance.id``, static membership) lets a restarted gateway take its
    partitions over at once: without it the group waits for the killed consumer's session to
    time out (45 s) before anyone reads them again. ``start`` (``earliest``/``latest``) applies to
    partitions without a committed offset.
    """
    return {
        **connection,
        "group.id": group_id,
        "group.instance.id": instance_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": start,
        "enable.partition.eof": False,
        "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        **passthrough,
    }


def incremental(conf: dict[str, Any]) -> bool:
    """True when the group hands out partitions incrementally (``cooperative-sticky`` or the
    KIP-848 ``consumer`` protocol): rebalance callbacks then add or remove partitions instead of
    replacing the whole assignment."""
    return ("cooperative" in str(conf.get("partition.assignment.strategy", ""))
            or conf.get("group.protocol") == "consumer")


def lane(topic: str, partition: int) -> str:
    """``"<topic>:<partition>"``: how a position names a partition (topic names hold no ``:``)."""
    return f"{topic}:{partition}"


def parse_position(position: Any) -> dict[str, int]:
    """A position (see the module docstring) checked, with its partition names in :func:`lane` form.

    Raises ``ValueError`` naming the first entry that is not ``"<topic>:<partition>": offset >= 0``.
    """
    if not isinstance(position, dict):
        raise ValueError(f"a Kafka source position must be a mapping of 'topic:partition' to offset, "
                         f"got {position!r}")
    offsets = {}
    for name, offset in position.items():
        topic, _, partition = str(name).rpartition(":")
        if not topic or not partition.isdigit() or isinstance(offset, bool) or not isinstance(offset, int) \
                or offset < 0:
            raise ValueError(f"Kafka source position entry {name!r}: {offset!r} is not "
                             f"'<topic>:<partition>': <offset >= 0>")
        offsets[lane(topic, int(partition))] = offset
    return offsets


class PartitionOffsets:
    """Next offsets of the partitions a consumer owns, and what it already committed, by lane.

    Entries of :attr:`next` come from records read (or from a resume position); a revoked
    partition leaves them, since its records now belong to another member. Commits only move
    forward within one assignment of a partition.
    """

    def __init__(self) -> None:
        self.next: dict[str, int] = {}
        """``lane → offset of the next record to read`` for every owned partition with a known offset."""
        self.assigned: dict[str, tuple[str, int]] = {}
        """``lane → (topic, partition)`` of every partition the consumer owns now."""
        self._committed: dict[str, int] = {}

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        for topic, partition in partitions:
            name = lane(topic, partition)
            self.assigned[name] = (topic, partition)
            self._committed.pop(name, None)

    def revoke(self, partitions: Iterable[tuple[str, int]]) -> None:
        for topic, partition in partitions:
            name = lane(topic, partition)
            self.assigned.pop(name, None)
            self._committed.pop(name, None)
            self.next.pop(name, None)

    def to_commit(self, position: dict[str, int]) -> tuple[list[TopicPartition], list[str]]:
        """``(offsets to commit, lanes skipped)`` for a delivered ``position``: partitions still
        owned whose offset moved past what was committed; skipped are those no longer owned."""
        commit, skipped = [], []
        for name, offset in position.items():
            owned = self.assigned.get(name)
            if owned is None:
                skipped.append(name)
            elif offset > self._committed.get(name, -1):
                commit.append(TopicPartition(owned[0], owned[1], offset))
        return commit, skipped

    def committed(self, offsets: Sequence[TopicPartition]) -> None:
        """Record ``offsets`` as committed (partitions no longer owned are ignored)."""
        for tp in offsets:
            name = lane(tp.topic, tp.partition)
            if name in self.assigned:
                self._committed[name] = max(tp.offset, self._committed.get(name, -1))
