"""Where each event goes: topic (fixed or ``topic_template``) and partition (``partitioner``, ``partition_key``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from savegress_gw.components import Batch, Status
from savegress_gw.kafka.delivery import BatchDelivery
from savegress_gw.kafka.partitioning import partition_for
from savegress_gw.kafka.topics import database_of, expand, partition_count, template_topic, topic_problem, \
    uses_database

PARTITION_COUNT_TTL_S = 300.0
"""Partition counts (for ``round-robin``, ``manual`` and ``hash`` with a ``partition_key``) are re-read this often."""

Partitioner = Literal["hash", "round-robin", "manual"]
Route = tuple[str, int]
"""(topic, partition); partition -1 leaves the choice to librdkafka's partitioner (murmur2 of the record key)."""


class Unroutable:
    """Why events of one (schema, table, operation, database) cannot be produced, and with what status."""

    __slots__ = ("status", "code", "message")

    def __init__(self, status: Status, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


class Router:
    """Routes of a batch's events, cached per (schema, table, operation, database) for
    :data:`PARTITION_COUNT_TTL_S`.

    ``template`` (when set) gives each event's topic, characters Kafka does not allow becoming
    ``_``; a templated topic seen for the first time is passed to ``new_topic`` (which may create
    it). ``hash`` without ``partition_key`` leaves the partition to librdkafka; with it, murmur2 of
    the expanded key picks it. ``round-robin`` deals records to partitions in turn; ``manual``
    expands ``partition_key`` to the partition number. Partition counts come from ``client``'s
    metadata (a Producer).
    """

    def __init__(self, topic: str, template: str | None, partitioner: Partitioner, partition_key: str | None,
                 client: Any, new_topic: Callable[[str], None]) -> None:
        self.topic, self.template, self.partitioner, self.partition_key = topic, template, partitioner, partition_key
        self.needed = template is not None or partitioner != "hash" or partition_key is not None
        """False when every event goes to ``topic`` with librdkafka's partitioner: skip :meth:`routes`."""
        self._client, self._new_topic = client, new_topic
        self._uses_database = uses_database(template, partition_key)
        self._routes: dict[tuple[str, str, str, str], Route | Unroutable] = {}
        self._routes_at = 0.0
        self._known_topics: set[str] = set()
        self._partition_counts: dict[str, tuple[int, float]] = {}
        self._round_robin: dict[str, int] = {}

    def routes(self, batch: Batch, delivery: BatchDelivery) -> list[Route | None]:
        """The route of each event; None for events that cannot be routed (already failed in ``delivery``)."""
        now = time.monotonic()
        if now - self._routes_at > PARTITION_COUNT_TTL_S:
            self._routes.clear()
            self._routes_at = now
        routes = self._routes
        round_robin = self.partitioner == "round-robin"
        out: list[Route | None] = []
        append = out.append
        schemas, tables, ops, payloads = batch.schemas, batch.tables, batch.operations, batch.payloads
        for i in range(len(batch)):
            key = (schemas[i], tables[i], ops[i], database_of(payloads[i]) if self._uses_database else "")
            route = routes.get(key)
            if route is None:
                route = self._route(key)
                if not isinstance(route, Unroutable) or route.status is Status.REJECTED:
                    routes[key] = route
            if isinstance(route, Unroutable):
                delivery.fail_with(i, route.status, route.code, route.message)
                append(None)
            elif round_robin:
                topic = route[0]
                count = self._partition_count(topic)
                if count is None:
                    delivery.fail_with(i, Status.ERRORED, "_UNKNOWN_PARTITION",
                                       f"partition count of topic {topic!r} not known yet")
                    append(None)
                    continue
                turn = self._round_robin.get(topic, 0)
                self._round_robin[topic] = turn + 1
                append((topic, turn % count))
            else:
                append(route)
        return out

    def _route(self, key: tuple[str, str, str, str]) -> Route | Unroutable:
        """Topic and partition of events with these (schema, table, operation, database)."""
        values = dict(zip(("schema", "table", "operation", "database"), key))
        if self.template is not None:
            topic = template_topic(self.template, values)
            if problem := topic_problem(topic):
                return Unroutable(Status.REJECTED, "_INVALID_TOPIC",
                                  f"topic_template {self.template!r} gives no valid topic: {problem}")
            if topic not in self._known_topics:
                self._new_topic(topic)
                self._known_topics.add(topic)
        else:
            topic = self.topic
        if self.partitioner == "round-robin" or self.partition_key is None:
            return topic, -1
        value = expand(self.partition_key, values)
        count = self._partition_count(topic)
        if self.partitioner == "manual":
            try:
                partition = int(value)
            except ValueError:
                return Unroutable(Status.REJECTED, "_INVALID_PARTITION",
                                  f"partition_key {self.partition_key!r} gives {value!r}, not a partition number")
            if count is not None and not 0 <= partition < count:
                return Unroutable(Status.REJECTED, "_UNKNOWN_PARTITION",
                                  f"partition {partition} does not exist in topic {topic!r} ({count} partitions)")
            return topic, partition
        if count is None:
            return Unroutable(Status.ERRORED, "_UNKNOWN_PARTITION", f"partition count of topic {topic!r} not known yet")
        return topic, partition_for(value.encode(), count)

    def _partition_count(self, topic: str) -> int | None:
        now = time.monotonic()
        cached = self._partition_counts.get(topic)
        if cached is not None and now - cached[1] < PARTITION_COUNT_TTL_S:
            return cached[0]
        count = partition_count(self._client, topic)
        if count is None:
            return cached[0] if cached else None
        self._partition_counts[topic] = (count, now)
        return count
