"""The Kafka source: records of Kafka topics as events, at least once, through a consumer group.

``source: {type: kafka, brokers: [kafka1:9092], topics: [cdc-events] | topic_pattern: "cdc\\..*",
group_id: <gateway.id>, start: earliest, format: envelope, sasl: {...}, tls: {...},
connect_timeout: 30s, consumer: {...}}``.
"""

from __future__ import annotations

import base64
import re
import time
from collections import deque
from typing import Any, Callable, Literal

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import Field, field_validator, model_validator

from savegress_gw import Batch, Component, ComponentConfig, Context, Source, SourceBatch, hookimpl
from savegress_gw.envelope import encode, format_timestamp, message_key, normalize
from savegress_gw.errors import GatewayError
from savegress_gw.kafka.client_errors import ClientErrors
from savegress_gw.kafka.connection import Brokers, SaslOptions, TlsOptions, client_settings, masked, wait_connected
from savegress_gw.kafka.consumer import PartitionOffsets, check_passthrough, consumer_settings, incremental, lane, \
    parse_position
from savegress_gw.kafka.errors import KafkaClientError, describe
from savegress_gw.kafka.logs import LibrdkafkaLog, RateLimitedLog
from savegress_gw.kafka.topics import TopicName
from savegress_gw.units import Duration

_LABEL = "kafka source"
REJECTED_KEPT = 1000
"""How many rejected records :attr:`KafkaSource.rejected` remembers (the newest)."""
REASONS_LOGGED = 5
"""A log line about rejected records names the reasons of this many of them (and every location)."""
_E = KafkaError
_MISSING_TOPIC = frozenset({_E.UNKNOWN_TOPIC_OR_PART, _E._UNKNOWN_TOPIC, _E._UNKNOWN_PARTITION})
_NOT_AUTHORIZED = frozenset({_E.TOPIC_AUTHORIZATION_FAILED, _E.GROUP_AUTHORIZATION_FAILED,
                             _E.CLUSTER_AUTHORIZATION_FAILED})


class KafkaSourceError(GatewayError):
    """The Kafka source could not start (brokers unreachable, authentication), or cannot go on
    (not authorized for a topic or the group, a fatal consumer error)."""


class KafkaSource(Source):
    """Consumes ``topics`` (or every topic matching ``topic_pattern``) in consumer group ``group_id``.

    **Consumer.** ``enable.auto.commit=false``, ``enable.auto.offset.store=false``,
    ``isolation.level=read_committed`` (records of aborted or open transactions are never read),
    ``auto.offset.reset`` = ``start`` for partitions without a committed offset; ``consumer``
    passes further librdkafka settings through (never the ones above but ``isolation.level``).

    **Position.** ``SourceBatch.position`` is ``{"<topic>:<partition>": <offset of the next record
    to read>}`` for every partition this consumer owns and has read from (or resumed at) since it
    was assigned: cumulative over batches, not only the batch's own partitions. A revoked
    partition leaves the position (its next records belong to its new owner). ``commit(position)``
    commits those offsets to the group synchronously, only for partitions still assigned and only
    forward; a failed commit is logged and left to the next one (each position covers the earlier).
    ``seek(position)`` (from the checkpoint) applies its offsets when those partitions are first
    assigned; other partitions start from the group's committed offset, else from ``start``.

    **Events.** Every event's envelope ``position`` is ``{"topic", "partition", "offset"}`` of its
    record (an envelope's own earlier ``position`` moves to ``position.upstream``): the source lane
    and the ordinal within it. ``format: envelope``: the value is a Savegress JSON envelope,
    normalized (``source`` defaults to ``kafka``); a value that is no JSON, no valid envelope, or
    missing (a tombstone) is *rejected*: skipped, its offset still advances, it is counted in
    ``events_dropped_total{reason="rejected"}``, kept in :attr:`rejected` and logged with topic,
    partition and offset (one line per read). ``format: raw`` wraps any value: id
    ``<topic>-<partition>-<offset>``, operation INSERT, table = topic, schema null, timestamp = the
    record's timestamp (else the time read), ``after`` = the value parsed as JSON when it is an
    object, else ``{"value": <the JSON value | the UTF-8 text | base64 of the bytes>}`` (base64 is
    flagged by ``metadata.value_encoding: "base64"``); a record without a value (tombstone) is a
    DELETE with ``after`` null. The record key (UTF-8 text, else base64 with
    ``metadata.kafka_key_encoding: "base64"``) goes to ``metadata.kafka_key`` and makes the
    event's message key ``<topic>:<key>``, so per-key order holds through the gateway. Events are
    handed over encoded (``trusted``).

    **Rebalances.** Events already read from a revoked partition but not yet committed are read
    again by its new owner (at least once: duplicates, never gaps). While backpressure pauses the
    source, its assigned partitions are paused (newly assigned ones too). The core does not read
    while paused; longer than ``max.poll.interval.ms`` (librdkafka: 5 min; set it under
    ``consumer``) makes the consumer leave the group, and it rejoins on the next read.

    **Errors.** ``open()`` fails within ``connect_timeout`` naming the brokers when none answers,
    and at once on a SASL or TLS failure. A missing topic is waited for: logged as a warning and
    consumed once it exists (the consumer looks for new topics every 10 s,
    ``topic.metadata.refresh.interval.ms``; librdkafka's default is 5 min). Not being authorized
    for a topic or the group, or a fatal consumer error, raises :class:`KafkaSourceError` from
    ``read``.
    """

    name = "kafka"
    resumable = True
    trusted = True
    sequence_lanes = True  # lane "<topic>:<partition>", ordinal offset + 1: a position is also {lane: last ordinal}

    class Config(ComponentConfig):
        brokers: Brokers = Field(min_length=1)
        """Bootstrap brokers, ``host:port`` (a list, or one comma-separated string)."""
        topics: list[TopicName] | None = Field(None, min_length=1)
        """Topics to consume; or ``topic_pattern``."""
        topic_pattern: str | None = None
        """Regular expression: every topic whose name matches it from the start is consumed, including
        topics created later (a librdkafka ``^`` subscription); or ``topics``."""
        group_id: str | None = Field(None, min_length=1)
        """Consumer group; default: ``gateway.id``."""
        start: Literal["earliest", "latest"] = "earliest"
        """Where a partition without a committed offset (in the group) or a resume position starts."""
        format: Literal["envelope", "raw"] = "envelope"
        """``envelope``: values are Savegress JSON envelopes; ``raw``: any value, wrapped into one."""
        sasl: SaslOptions | None = None
        """SASL authentication; absent = none."""
        tls: TlsOptions | None = None
        """TLS to the brokers; absent = plaintext."""
        connect_timeout: Duration = Field(30.0, gt=0)
        """``open()`` fails when no broker answered within this time (at once on an authentication failure)."""
        consumer: dict[str, str | int | bool | float] = {}
        """librdkafka consumer settings passed through (``max.poll.interval.ms``, ``fetch.max.bytes``, ...);
        not ``group.id``, ``auto.offset.reset``, ``bootstrap.servers`` nor the offset-commit settings."""

        _passthrough = field_validator("consumer")(check_passthrough)

        @field_validator("topic_pattern")
        @classmethod
        def _compiles(cls, pattern: str | None) -> str | None:
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"topic_pattern {pattern!r} is not a regular expression: {exc}") from None
            return pattern

        @model_validator(mode="after")
        def _one_selection(self) -> "KafkaSource.Config":
            if (self.topics is None) == (self.topic_pattern is None):
                raise ValueError("set exactly one of topics (a list) and topic_pattern (a regular expression)")
            return self

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.rejected: deque[tuple[str, int, int, str]] = deque(maxlen=REJECTED_KEPT)
        """The newest rejected records: ``(topic, partition, offset, reason)``."""
        self.rejected_total = 0
        """How many records were rejected since ``open``."""
        self.consumer_config: dict[str, Any] = {}
        """The librdkafka configuration in use (set by ``open``; ``sasl.password`` masked)."""
        self._consumer: Consumer | None = None
        self._offsets = PartitionOffsets()
        self._resume: dict[str, int] = {}
        self._paused = False
        self._failure: str | None = None
        self._metrics: Any = None

    # ------------------------------------------------------------------ lifecycle

    def open(self, context: Context) -> None:
        cfg = self.config
        gateway_id = context.profile.gateway.id if context.profile is not None else "savegress-gw"
        group = cfg.group_id or gateway_id
        self._log = context.log.bind(source="kafka", brokers=",".join(cfg.brokers), group=group)
        self._limited = RateLimitedLog(self._log)
        self._metrics = context.metrics
        conf = consumer_settings(client_settings(cfg.brokers, f"{gateway_id}-{context.process}", cfg.sasl, cfg.tls),
                                 group, f"{gateway_id}-source", cfg.start, cfg.consumer)
        self.consumer_config = masked(conf)
        self._incremental = incremental(conf)
        self._errors = errors = ClientErrors(self._limited, "kafka consumer failed fatally")
        errors.opening = True
        try:
            self._consumer = Consumer({**conf, "error_cb": errors, "logger": LibrdkafkaLog(self._limited)})
        except (KafkaException, ValueError, TypeError) as exc:
            raise KafkaSourceError(f"{_LABEL}: invalid consumer configuration: {describe(exc)}") from None
        try:
            metadata = wait_connected(self._consumer, cfg.brokers, errors.open_errors, cfg.connect_timeout, _LABEL,
                                      "connect_timeout")
        except KafkaClientError as exc:
            self.close()
            raise KafkaSourceError(str(exc)) from None
        finally:
            errors.opening = False
            errors.open_errors.clear()
        if cfg.topics is not None:
            subscription = list(cfg.topics)
            missing = [t for t in cfg.topics if t not in metadata.topics or metadata.topics[t].error is not None]
            if missing:
                self._log.warning("topics do not exist yet: waiting for them", topics=missing)
        else:
            pattern = cfg.topic_pattern or ""
            subscription = [pattern if pattern.startswith("^") else f"^{pattern}"]
        self._consumer.subscribe(subscription, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        self._log.info("kafka consumer subscribed", subscription=subscription, format=cfg.format, start=cfg.start)

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()  # leaves the group; nothing is committed here
            except (KafkaException, RuntimeError) as exc:
                self._log.warning("closing the kafka consumer failed", error=describe(exc))

    def event_sequence(self, event: dict[str, Any]) -> tuple[str, int]:
        """``("<topic>:<partition>", offset + 1)`` of the record the event came from."""
        position = event["position"]
        return lane(position["topic"], position["partition"]), position["offset"] + 1

    def seek(self, position: Any) -> None:
        """Resume at ``position`` (one ``read`` returned): its offsets apply when those partitions
        are assigned. Raises ``ValueError`` for anything that is not such a position."""
        self._resume = parse_position(position)

    @property
    def assigned(self) -> list[str]:
        """``<topic>:<partition>`` of every partition the consumer owns now (as of its last ``read``)."""
        return sorted(self._offsets.assigned)

    # ------------------------------------------------------------------ reading

    def read(self, max_events: int, timeout_s: float) -> SourceBatch | None:
        assert self._consumer is not None, "read() before open()"
        self._raise_failure()
        messages = self._consumer.consume(max_events, timeout_s)
        if not messages:
            return None
        records: list[Message] = []
        read_to: dict[tuple[str, int], int] = {}
        for message in messages:
            err = message.error()
            if err is not None:
                self._on_message_error(err, message)
                continue
            records.append(message)
            read_to[(message.topic(), message.partition())] = message.offset() + 1
        self._raise_failure()
        if not read_to:
            return None
        assigned, nxt = self._offsets.assigned, self._offsets.next
        for (topic, partition), offset in read_to.items():
            name = lane(topic, partition)
            if name in assigned:  # a record of a partition revoked within this consume() call is not ours to commit
                nxt[name] = offset
        now_ns = time.time_ns()
        if self.config.format == "raw":
            batch = _raw_batch(records, now_ns)
        else:
            events, rejected = _envelopes(records)
            if rejected:
                self._reject(rejected)
            batch = encode(events, now_ns)
        return SourceBatch([], dict(nxt), encoded=batch)

    def _raise_failure(self) -> None:
        """Raise :class:`KafkaSourceError` once the consumer failed fatally or is not authorized."""
        if self._errors.fatal is not None:
            raise KafkaSourceError(f"{_LABEL}: fatal consumer error: {self._errors.fatal}")
        if self._failure is not None:
            raise KafkaSourceError(self._failure)

    def _reject(self, records: list[tuple[str, int, int, str]]) -> None:
        """Count, keep and log (one line) records whose value is not a valid envelope."""
        self.rejected.extend(records)
        self.rejected_total += len(records)
        if self._metrics is not None:
            self._metrics.inc("events_dropped_total", len(records), label="rejected")
        self._log.error("malformed records skipped (not a valid envelope)", count=len(records),
                        records=[f"{lane(t, p)}@{o}" for t, p, o, _ in records],
                        reasons=[f"{lane(t, p)}@{o}: {r}" for t, p, o, r in records[:REASONS_LOGGED]])

    def commit(self, position: Any, dropped: int = 0) -> None:
        """Commit ``position``'s offsets to the group (synchronously) for partitions still assigned."""
        if self._consumer is None:
            return
        offsets, skipped = self._offsets.to_commit(position)
        if skipped:
            self._limited.emit("info", "skipped", "offsets of partitions no longer assigned not committed; "
                                                  "their new owner reads those records again", partitions=skipped)
        if not offsets:
            return
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._limited.emit("warning", "commit", "offset commit failed; the next commit covers these offsets",
                               error=describe(exc), partitions=[lane(tp.topic, tp.partition) for tp in offsets])
            return
        failed = [tp for tp in result or () if tp.error is not None]
        if failed:
            self._limited.emit("warning", "commit", "offset commit failed for some partitions; the next commit "
                               "covers them", errors={lane(tp.topic, tp.partition): str(tp.error) for tp in failed})
        self._offsets.committed([tp for tp in result or offsets if tp.error is None])

    # ------------------------------------------------------------------ flow control

    def pause(self) -> None:
        self._paused = True
        if self._consumer is not None:
            self._consumer.pause(self._consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        if self._consumer is not None:
            self._consumer.resume(self._consumer.assignment())

    # ------------------------------------------------------------------ librdkafka callbacks

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        resumed = {}
        for tp in partitions:
            name = lane(tp.topic, tp.partition)
            if name in self._resume:
                tp.offset = resumed[name] = self._resume.pop(name)
        self._offsets.assign((tp.topic, tp.partition) for tp in partitions)
        self._offsets.next.update(resumed)
        if self._incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        if self._paused:
            consumer.pause(partitions)
        self._log.info("partitions assigned", partitions=[lane(tp.topic, tp.partition) for tp in partitions],
                       resumed_at=resumed)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._offsets.revoke((tp.topic, tp.partition) for tp in partitions)
        self._log.info("partitions revoked; records read from them but not yet committed are read again by "
                       "their next owner", partitions=[lane(tp.topic, tp.partition) for tp in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._offsets.revoke((tp.topic, tp.partition) for tp in partitions)
        self._log.warning("partitions lost (the group moved on without this consumer); records read from them "
                          "but not yet committed are read again", partitions=[lane(tp.topic, tp.partition)
                                                                             for tp in partitions])

    def _on_message_error(self, err: KafkaError, message: Message) -> None:
        if err.code() in _MISSING_TOPIC:
            self._limited.emit("warning", ("missing", message.topic()), "topic does not exist (yet): waiting for it",
                               topic=message.topic(), reason=err.str())
        elif err.code() in _NOT_AUTHORIZED or err.fatal():
            self._failure = f"{_LABEL}: {err.name()} on topic {message.topic()!r}: {err.str()}"
        elif err.code() != _E._PARTITION_EOF:
            self._limited.emit("warning", ("error", err.code()), "kafka consumer error", error=err.name(),
                               reason=err.str(), topic=message.topic())


def _envelopes(records: list[Message]) -> tuple[list[dict[str, Any]], list[tuple[str, int, int, str]]]:
    """``format: envelope``: the normalized envelopes in ``records``, and ``(topic, partition,
    offset, reason)`` of each record that holds none."""
    events, rejected = [], []
    for message in records:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        value = message.value()
        try:
            if value is None:
                raise ValueError("the record has no value (a tombstone), not an envelope")
            event = normalize(orjson.loads(value), "kafka")
        except ValueError as exc:  # orjson.JSONDecodeError or EnvelopeError
            rejected.append((topic, partition, offset, f"{type(exc).__name__}: {exc}"))
            continue
        where = {"topic": topic, "partition": partition, "offset": offset}
        upstream = event.get("position")
        event["position"] = {**where, "upstream": upstream} if upstream is not None else where
        events.append(event)
    return events, rejected


def _raw_batch(records: list[Message], now_ns: int) -> Batch:
    """``format: raw``: ``records`` wrapped into envelopes, encoded as columns (one pass, no re-parse)."""
    payloads, keys, ids, operations, tables, millis = [], [], [], [], [], []
    stamps: dict[int, str] = {}  # records of one read share few timestamps
    now_ms = now_ns // 1_000_000
    for message in records:
        event, key = _wrap(message)
        kind, stamp_ms = message.timestamp()
        if kind == TIMESTAMP_NOT_AVAILABLE or stamp_ms < 0:
            stamp_ms = now_ms
        stamp = stamps.get(stamp_ms)
        if stamp is None:
            stamp = stamps[stamp_ms] = format_timestamp(stamp_ms * 1_000_000)
        event["timestamp"] = stamp
        payloads.append(orjson.dumps(event))
        keys.append(key if key is not None else message_key(event))
        ids.append(event["id"])
        operations.append(event["operation"])
        tables.append(event["table"])
        millis.append(stamp_ms)
    return Batch(payloads, keys, ids, operations, [""] * len(ids), tables, millis, [now_ns] * len(ids))


def _wrap(message: Message) -> tuple[dict[str, Any], str | None]:
    """The envelope wrapping ``message`` (without ``timestamp``), and its message key (None without a key)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    metadata: dict[str, Any] = {}
    routing_key = None
    key = message.key()
    if key is not None:
        text, encoded = _text(key)
        metadata["kafka_key"] = text
        if encoded:
            metadata["kafka_key_encoding"] = "base64"
        routing_key = f"{topic}:{text}"
    value = message.value()
    after: dict[str, Any] | None = None
    if value is not None:
        try:
            parsed = orjson.loads(value)
            after = parsed if isinstance(parsed, dict) else {"value": parsed}
        except orjson.JSONDecodeError:
            text, encoded = _text(value)
            after = {"value": text}
            if encoded:
                metadata["value_encoding"] = "base64"
    event = {"id": f"{topic}-{partition}-{offset}", "source": "kafka", "schema": None, "table": topic,
             "operation": "INSERT" if value is not None else "DELETE", "timestamp": None, "transaction_id": None,
             "position": {"topic": topic, "partition": partition, "offset": offset}, "before": None, "after": after,
             "metadata": metadata or None}
    return event, routing_key


def _text(data: bytes) -> tuple[str, bool]:
    """``data`` as UTF-8 text, else as base64 (then True)."""
    try:
        return data.decode(), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(KafkaSource)
