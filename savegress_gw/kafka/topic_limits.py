"""The largest record each output topic takes, so the exactly-once worker can refuse it itself.

The broker refuses a record batch larger than the topic's ``max.message.bytes``; in a transaction
that aborts the whole transaction, and librdkafka reports every record of the batch as failed, so
the culprit cannot be told from its neighbours. The exactly-once worker therefore measures each
record before producing it against the smaller of its own limit (``output.max_request_size``, or
``dlq.max_record_size`` for dead-letter records) and what the topic takes (its
``max.message.bytes`` minus :data:`BATCH_OVERHEAD`: a record too large to share a batch is sent
alone in one). The topic setting is read once per topic with ``DescribeConfigs``; a topic that
cannot be described (no permission, no answer) is held to the own limit only.

A topic whose ``max.message.bytes`` is below the producer's ``batch.size`` may still refuse
batches of small records; :meth:`TopicLimits.limit` warns about that once per topic.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka.admin import AdminClient, ConfigResource

from savegress_gw.kafka.errors import describe

BATCH_OVERHEAD = 61
"""Bytes of a record batch's header (Kafka's ``DefaultRecordBatch.RECORD_BATCH_OVERHEAD``)."""


class TopicLimits:
    """Per topic: the largest record size to produce, and the setting that sets it.

    ``own_limit`` is the client's limit and its setting's name, e.g. ``(1048576,
    "output.max_request_size")``; ``batch_size`` the producer's ``batch.size`` (librdkafka's
    largest record batch, framing included).
    """

    def __init__(self, admin: AdminClient, own_limit: tuple[int, str], batch_size: int, timeout_s: float,
                 log: Any) -> None:
        self.admin, self.own_limit, self.batch_size = admin, own_limit, batch_size
        self.timeout_s, self.log = timeout_s, log
        self._limits: dict[str, tuple[int, str]] = {}
        self.smallest = own_limit[0]
        """The smallest limit of any topic seen so far: a batch whose records are all below it needs no closer look."""

    def limit(self, topic: str) -> tuple[int, str]:
        """``(bytes, setting)``: the largest record ``topic`` takes, and which setting says so (for
        messages: ``output.max_request_size 1048576``)."""
        known = self._limits.get(topic)
        if known is None:
            known = self._limits[topic] = self._read(topic)
            self.smallest = min(self.smallest, known[0])
        return known

    def _read(self, topic: str) -> tuple[int, str]:
        own_size, own_setting = self.own_limit
        own = (own_size, f"{own_setting} {own_size}")
        resource = ConfigResource("topic", topic)
        try:
            entries = self.admin.describe_configs([resource], request_timeout=self.timeout_s)[resource].result(
                timeout=self.timeout_s)
            topic_max = int(entries["max.message.bytes"].value)
        except Exception as exc:  # not described (permissions, no answer, not created yet): the output's limit
            self.log.info(f"could not read the topic's max.message.bytes; records are held to {own_setting}",
                          topic=topic, error=describe(exc))
            return own
        if topic_max < self.batch_size:  # librdkafka's batch.size includes the batch's framing
            self.log.warning("the topic's max.message.bytes is below output.batch_size: the broker may refuse "
                             "whole batches of small records (each such refusal aborts a transaction); lower "
                             "output.batch_size or raise the topic's max.message.bytes", topic=topic,
                             max_message_bytes=topic_max, batch_size=self.batch_size)
        if topic_max - BATCH_OVERHEAD < own_size:
            return topic_max - BATCH_OVERHEAD, f"the topic's max.message.bytes {topic_max} less a batch header"
        return own
