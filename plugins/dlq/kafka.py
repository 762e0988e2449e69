"""The Kafka dead-letter queue: every parked event becomes one record of a dead-letter topic.

``dlq: {enabled: true, type: kafka, topic: cdc-events.dlq, timeout: 30s, max_record_size: 16MB}``;
``type: kafka`` is the default when ``output.type`` is kafka. With another output the queue needs
its own cluster: ``dlq: {type: kafka, brokers: [kafka1:9092], sasl: {...}, tls: {...}}``.

Record format: the original key and value (the JSON envelope exactly as the output got it), the
four savegress headers of the output (``savegress-event-id``, ``-operation``, ``-table``,
``-timestamp``), then

* ``savegress-dlq-reason``: the failure as the sink reported it;
* ``savegress-dlq-error-class``: the error code, exception name or HTTP status the reason starts
  with (:func:`savegress_gw.deadletter.error_class`, e.g. ``MSG_SIZE_TOO_LARGE``), or empty;
* ``savegress-dlq-attempts``: how many sends were made, as a decimal string;
* ``savegress-dlq-first-failure`` and ``savegress-dlq-last-failure``: ISO 8601 UTC. The pipeline
  hands over only the final failure, so both are the time the event was parked;
* ``savegress-dlq-origin``: ``<gateway id>/<process>``, who parked it;
* ``savegress-dlq-original-topic``: the output topic; with ``topic_template``, the topic the event
  was routed to (or ``output.topic`` when the template gives no legal name); empty when the
  output is not Kafka.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from pydantic import Field, field_validator

from savegress_gw import Batch, Component, ComponentConfig, Context, DeadLetterQueue, Outcome, Status, hookimpl
from savegress_gw.deadletter import error_class
from savegress_gw.deadletter.topic import H_ATTEMPTS, H_ERROR_CLASS, H_FIRST_FAILURE, H_LAST_FAILURE, H_ORIGIN, \
    H_ORIGINAL_TOPIC, H_REASON, TopicStore
from savegress_gw.envelope import now_iso
from savegress_gw.errors import GatewayError
from savegress_gw.kafka.client_errors import ClientErrors
from savegress_gw.kafka.codec import codec_settings
from savegress_gw.kafka.connection import Brokers, SaslOptions, TlsOptions, admin_settings, client_settings, \
    wait_connected
from savegress_gw.kafka.delivery import BatchDelivery
from savegress_gw.kafka.errors import KafkaClientError, describe
from savegress_gw.kafka.headers import event_headers
from savegress_gw.kafka.logs import LibrdkafkaLog, RateLimitedLog
from savegress_gw.kafka.topics import TopicName, TopicOptions, create_topic, database_of, template_topic, topic_problem, \
    uses_database
from savegress_gw.units import Duration, Size

DEFAULT_TOPIC = "savegress.dlq"
"""The dead-letter topic when ``output.topic`` cannot name it (a templated or non-Kafka output)."""
_LABEL = "kafka dlq"


class KafkaDlqError(GatewayError):
    """The dead-letter topic could not be set up, or a put was not confirmed (the events stay in the pipeline)."""


@dataclass(frozen=True)
class _Target:
    """Where and how the queue writes, resolved from its own config and the profile's output."""

    topic: str
    brokers: list[str]
    sasl: SaslOptions | None
    tls: TlsOptions | None
    passthrough: dict[str, Any]
    topics: TopicOptions
    output: Any
    """The output section when ``output.type`` is kafka, else None."""


def _kafka_output(profile: Any) -> Any:
    return profile.output if profile is not None and profile.selected("sink") == "kafka" else None


def _target(config: "KafkaDeadLetterQueue.Config", profile: Any) -> _Target:
    output = _kafka_output(profile)
    if config.topic is not None:
        topic = config.topic
    elif output is not None and output.topic_template is None:
        topic = f"{output.topic}.dlq"
    else:
        topic = DEFAULT_TOPIC
    topics = output.topics if output is not None else TopicOptions()
    if config.brokers is not None or output is None:
        return _Target(topic, config.brokers or [], config.sasl, config.tls, {}, topics, output)
    return _Target(topic, output.brokers, output.sasl, output.tls, dict(output.producer), topics, output)


class KafkaDeadLetterQueue(DeadLetterQueue):
    """Parks events as records of a dead-letter topic, with the failure in headers.

    **Topic.** ``topic``, else ``<output.topic>.dlq``, else (templated or non-Kafka output)
    :data:`DEFAULT_TOPIC`. ``open()`` creates it when the output's ``topics.create`` is true (the
    default), with the output's ``topics.partitions`` and ``replication_factor``,
    ``min.insync.replicas`` from ``replication.min_isr`` and ``max.message.bytes`` =
    ``max_record_size``; when it exists already and allows smaller records, a warning says so.

    **Connection.** Without ``brokers``, the output's ``brokers``, ``sasl``, ``tls`` and
    ``producer`` pass-through (the output must then be Kafka); with ``brokers``, those and this
    section's ``sasl`` and ``tls``. Whatever the pass-through says, the queue's producer is
    idempotent with ``acks=all``, ``message.max.bytes`` = ``max_record_size`` and
    ``message.timeout.ms`` = ``timeout``; records use the output's Kafka codec.

    **Size.** The events parked for being too large for ``output.max_request_size`` must fit:
    ``max_record_size`` (default 16MB) raises both the producer's and the topic's limit. No broker
    setting needs to change: a topic's ``max.message.bytes`` overrides the broker's
    ``message.max.bytes`` (about 1MB by default; a 1-node kafka_local cluster takes 2MB records
    into a topic created here), followers replicate such records (``replica.fetch.max.bytes`` is
    not a hard limit) and consumers fetch them (librdkafka and the Java client return a record
    larger than their fetch size). The broker's hard limit is ``socket.request.max.bytes`` (100MB
    by default), the largest request it reads.

    **Reading back** (``dlq list | show | replay | purge``, ``preserve_order``): :meth:`store` gives
    the topic as a :class:`~savegress_gw.deadletter.topic.TopicStore`, which removes entries with
    markers in ``<topic>.removed`` and ``delete_records`` (its docstring says how).

    **put** produces one record per event, then waits until every delivery report arrived, at most
    ``timeout``; when one failed or the time ran out (the rest is then purged) it raises
    :class:`KafkaDlqError`, and the pipeline keeps the events and parks them again later: records
    of the first try that did arrive are then in the topic twice. The producer is made by the first
    put (``open()`` only checks that the cluster answers: most runs never park an event, and the
    exactly-once worker parks through its own transactional producer); one that failed fatally
    is replaced at the next put.
    """

    name = "kafka"

    class Config(ComponentConfig):
        topic: TopicName | None = None
        """The dead-letter topic; default ``<output.topic>.dlq``, or ``savegress.dlq`` when the output
        uses ``topic_template`` or is not Kafka."""
        brokers: Brokers | None = None
        """The queue's own cluster, ``host:port`` (list or comma-separated); required when the output
        is not Kafka. Unset: the output's brokers, ``sasl``, ``tls`` and ``producer`` settings."""
        sasl: SaslOptions | None = None
        """SASL authentication for ``brokers`` (only with ``brokers``)."""
        tls: TlsOptions | None = None
        """TLS to ``brokers`` (only with ``brokers``)."""
        timeout: Duration = Field(30.0, gt=0)
        """How long a put waits for every record's acknowledgement (and ``open()`` for the cluster);
        below ``gateway.heartbeat_timeout``, since a put blocks the worker loop."""
        max_record_size: Size = Field(16 * 1024 * 1024, ge=1000, le=1_000_000_000)
        """Largest record the queue writes (its producer's ``message.max.bytes`` and the topic's
        ``max.message.bytes``); keep it above ``output.max_request_size``."""

        @field_validator("brokers")
        @classmethod
        def _not_empty(cls, brokers: list[str] | None) -> list[str] | None:
            if brokers is not None and not brokers:
                raise ValueError("brokers needs at least one host:port")
            return brokers

    config: Config

    @classmethod
    def check_profile(cls, config: ComponentConfig, profile: Any) -> list[str]:
        assert isinstance(config, cls.Config)
        target = _target(config, profile)
        output = target.output
        problems = []
        if output is None and config.brokers is None:
            problems.append("dlq.brokers: required when output.type is not kafka (the dead-letter topic needs a "
                            "cluster)")
        if output is not None and config.brokers is None:
            problems.extend(f"dlq.{key}: only used with dlq.brokers; without them the output's connection applies"
                            for key in ("sasl", "tls") if getattr(config, key) is not None)
        if problem := topic_problem(target.topic):
            problems.append(f"dlq.topic: {problem} (set dlq.topic)")
        elif output is not None and config.brokers is None and output.topic_template is None \
                and target.topic == output.topic:
            problems.append(f"dlq.topic: {target.topic!r} is output.topic; parked events would mix with delivered ones")
        if profile.exactly_once.enabled and config.brokers is not None:
            problems.append("dlq.brokers: with exactly_once.enabled the dead-letter topic must be on the output's "
                            "cluster (a parked event is written in its batch's transaction, and a transaction "
                            "spans one cluster); remove dlq.brokers, dlq.sasl and dlq.tls")
        heartbeat = profile.gateway.heartbeat_timeout
        if config.timeout >= heartbeat:
            problems.append(f"dlq.timeout: {config.timeout:g}s must be below gateway.heartbeat_timeout {heartbeat:g}s "
                            f"(a put blocks the worker loop that writes the heartbeat)")
        if output is not None and config.max_record_size < output.max_request_size:
            problems.append(f"dlq.max_record_size: {config.max_record_size} is below output.max_request_size "
                            f"{output.max_request_size}; parked records may be as large as delivered ones")
        return problems

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._producer: Producer | None = None
        self._conf: dict[str, Any] = {}
        self._errors: ClientErrors | None = None
        """The current producer's error_cb (a replaced producer gets a new one)."""

    # ------------------------------------------------------------------ lifecycle

    def open(self, context: Context) -> None:
        cfg, profile = self.config, context.profile
        self._target = target = _target(cfg, profile)
        if not target.brokers:
            raise KafkaDlqError(f"{_LABEL}: no brokers: set dlq.brokers (the output is not Kafka)")
        self._log = context.log.bind(dlq="kafka", topic=target.topic)
        self._limited = RateLimitedLog(self._log)
        output = target.output
        client_id = f"{profile.gateway.id if profile is not None else 'savegress-gw'}-{context.process}-dlq"
        self._conf = {
            **client_settings(target.brokers, client_id, target.sasl, target.tls),
            **codec_settings(output.compression if output is not None else None,
                             output.compression_level if output is not None else None, profile),
            **target.passthrough,
            "acks": "all", "enable.idempotence": True, "max.in.flight.requests.per.connection": 5,
            "message.max.bytes": cfg.max_record_size, "message.timeout.ms": int(cfg.timeout * 1000),
            "allow.auto.create.topics": False,
        }
        min_isr = profile.replication.min_isr if profile is not None else None
        try:
            # a producer only to reach the cluster: most runs never park anything (and the
            # exactly-once worker parks through its own producer), so put() makes its own on first use
            producer, errors = self._new_producer(opening=True)
            metadata = wait_connected(producer, target.brokers, errors.open_errors, cfg.timeout, _LABEL, "dlq.timeout")
            admin = AdminClient({**admin_settings(self._conf), "logger": LibrdkafkaLog(self._limited)})
            created = False
            if target.topics.create:
                settings = {"max.message.bytes": str(cfg.max_record_size),
                            **({"min.insync.replicas": str(min_isr)} if min_isr else {})}
                created = create_topic(admin, target.topic, target.topics, settings, min(30.0, cfg.timeout), _LABEL)
            elif target.topic not in metadata.topics:
                raise KafkaDlqError(f"{_LABEL}: topic {target.topic!r} does not exist on {','.join(target.brokers)} "
                                    f"and output.topics.create is false; create it or set dlq.topic")
            if not created:
                self._check_record_limit(admin)
        except KafkaClientError as exc:
            raise KafkaDlqError(str(exc)) from None
        finally:
            self._producer, self._errors = None, None
        self._reader = self.store(profile, self._log)
        self._log.info("kafka dead-letter topic ready", created=created, max_record_size=cfg.max_record_size)

    def _new_producer(self, opening: bool = False) -> tuple[Producer, ClientErrors]:
        """A producer with its own :class:`ClientErrors` (collecting errors for ``wait_connected``
        while ``opening``)."""
        errors = ClientErrors(self._limited, "kafka dead-letter producer failed fatally")
        errors.opening = opening
        try:
            self._producer = Producer({**self._conf, "error_cb": errors, "logger": LibrdkafkaLog(self._limited)})
        except (KafkaException, ValueError, TypeError) as exc:
            raise KafkaDlqError(f"{_LABEL}: invalid producer configuration: {describe(exc)}") from None
        self._errors = errors
        return self._producer, errors

    def _check_record_limit(self, admin: AdminClient) -> None:
        """Warn when the existing topic's ``max.message.bytes`` is below ``max_record_size``."""
        resource = ConfigResource("topic", self._target.topic)
        timeout = min(30.0, self.config.timeout)
        try:
            entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout=timeout)
            limit = int(entries["max.message.bytes"].value)
        except Exception as exc:  # not allowed to describe it, or no answer: only the warning is lost
            self._log.info("could not read the dead-letter topic's max.message.bytes", error=describe(exc))
            return
        if limit < self.config.max_record_size:
            self._log.warning("the dead-letter topic takes records up to its max.message.bytes only; larger "
                              "events cannot be parked", max_message_bytes=limit,
                              max_record_size=self.config.max_record_size)

    def close(self) -> None:
        self._producer = None  # put() waits for its own records: nothing is outstanding here

    # ------------------------------------------------------------------ reading back

    def store(self, profile: Any, log: Any = None) -> TopicStore:
        """The dead-letter topic as a store, with this config and ``profile`` (the queue need not be open)."""
        target = _target(self.config, profile)
        if not target.brokers:
            raise KafkaDlqError(f"{_LABEL}: no brokers: set dlq.brokers (the output is not Kafka)")
        gateway = profile.gateway.id if profile is not None else "savegress-gw"
        conf = client_settings(target.brokers, f"{gateway}-dlq-reader", target.sasl, target.tls)
        return TopicStore(target.topic, conf, log, timeout_s=self.config.timeout)

    def parked_keys(self) -> dict[str, str]:
        """Every key with a live entry in the topic → the event id of its oldest one (``preserve_order``)."""
        return self._reader.parked_keys()

    # ------------------------------------------------------------------ put

    def put(self, batch: Batch, reason: str, attempts: int, origin: str) -> None:
        n = len(batch)
        if not n:
            return
        assert self._conf, "open() first"
        producer = self._producer
        if producer is None:
            producer, _ = self._new_producer()
        elif self._errors is not None and self._errors.fatal is not None:
            self._log.warning("replacing the dead-letter producer after a fatal error", error=self._errors.fatal)
            producer, _ = self._new_producer()
        topic, timeout = self._target.topic, self.config.timeout
        outcomes: list[Outcome] = []
        delivery = BatchDelivery(n, outcomes.append, ("max_record_size", self.config.max_record_size),
                                 keys=batch.keys, values=batch.payloads)
        deadline = time.monotonic() + timeout
        for i, headers in enumerate(self.record_headers(batch, [reason] * n, attempts, origin)):
            if not self._produce(producer, delivery, batch, i, headers, deadline):
                delivery.fail_rest(range(i, n), "_QUEUE_FULL", "librdkafka's queue stayed full", None)
                break
        delivery.release()
        while not outcomes and (remaining := deadline - time.monotonic()) > 0:
            producer.poll(min(0.1, remaining))
        if not outcomes:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)
            raise KafkaDlqError(f"{_LABEL}: {n} records to topic {topic!r} not acknowledged within timeout "
                                f"{timeout:g}s")
        outcome = outcomes[0]
        if outcome.status is not Status.DELIVERED or outcome.failed:
            raise KafkaDlqError(f"{_LABEL}: {len(outcome.failed) or n} of {n} records to topic {topic!r} failed: "
                                f"{outcome.reason}")

    @property
    def topic(self) -> str:
        """The dead-letter topic (after ``open()``)."""
        return self._target.topic

    @property
    def max_record_size(self) -> int:
        return self.config.max_record_size

    def record_headers(self, batch: Batch, reasons: list[str], attempts: int, origin: str
                       ) -> list[list[tuple[str, str]]]:
        """The headers of each event's dead-letter record (the record's key and value are the
        event's own): the savegress event headers, then the failure (``reasons[i]`` for event ``i``).

        Also used by the exactly-once worker, which writes these records in its own transaction.
        """
        parked = now_iso()
        return [[*event_headers(batch, i), (H_REASON, reason), (H_ERROR_CLASS, error_class(reason)),
                 (H_ATTEMPTS, str(attempts)), (H_FIRST_FAILURE, parked), (H_LAST_FAILURE, parked),
                 (H_ORIGIN, origin), (H_ORIGINAL_TOPIC, original)]
                for i, (reason, original) in enumerate(zip(reasons, self._original_topics(batch)))]

    def _produce(self, producer: Producer, delivery: BatchDelivery, batch: Batch, i: int,
                 headers: list[tuple[str, str]], deadline: float) -> bool:
        """Produce record ``i``, waiting for room in librdkafka's queue until ``deadline`` (False: no room)."""
        topic, payload, key = self._target.topic, batch.payloads[i], batch.keys[i]
        while True:
            try:
                producer.produce(topic, payload, key, on_delivery=delivery.report, headers=headers)
                return True
            except BufferError:
                if time.monotonic() >= deadline:
                    return False
                producer.poll(0.1)
            except KafkaException as exc:
                delivery.fail(i, exc.args[0], topic, len(payload) + len(key))
                return True

    def _original_topics(self, batch: Batch) -> list[str]:
        """The output topic each event was meant for (see the module docstring)."""
        output = self._target.output
        if output is None:
            return [""] * len(batch)
        template = output.topic_template
        if template is None:
            return [output.topic] * len(batch)
        with_database = uses_database(template)
        cache: dict[tuple[str, str, str, str], str] = {}
        topics = []
        for schema, table, operation, payload in zip(batch.schemas, batch.tables, batch.operations, batch.payloads):
            key = (schema, table, operation, database_of(payload) if with_database else "")
            topic = cache.get(key)
            if topic is None:
                topic = template_topic(template, dict(zip(("schema", "table", "operation", "database"), key)))
                topic = cache[key] = output.topic if topic_problem(topic) else topic
            topics.append(topic)
        return topics


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(KafkaDeadLetterQueue)
