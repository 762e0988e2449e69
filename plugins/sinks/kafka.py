"""The Kafka sink: every event as one Kafka record, through an idempotent librdkafka producer.

``output: {type: kafka, brokers: [kafka1:9092], topic: cdc-events, topic_template: "cdc.${schema}.${table}",
acks: all, compression: zstd, batch_size: 1MB, linger_ms: 5, max_request_size: 1048576, partitioner: hash,
partition_key: "${table}", sasl: {...}, tls: {...}, topics: {create: true, partitions: 6},
connect_timeout: 30s, startup: {wait: false, log_interval: 10s}, producer: {...}}``
(``spec/reference.md`` 3.4 and 4.2).

Record format (``spec/reference.md`` 3.4): key ``table:pk`` (the batch's ``keys`` column), value the
JSON envelope exactly as the gateway encoded it, headers ``savegress-event-id``,
``savegress-operation``, ``savegress-table`` and ``savegress-timestamp`` (event time in Unix
milliseconds, as a decimal string). The record's own Kafka timestamp is the producer's time, so
broker retention never deletes a replayed old event on arrival.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Literal

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from pydantic import Field, field_validator, model_validator

from savegress_gw import Batch, Component, ComponentConfig, Context, Outcome, Sink, Status, hookimpl
from savegress_gw.components import DeliveryCallback
from savegress_gw.errors import GatewayError
from savegress_gw.kafka.codec import codec_settings
from savegress_gw.kafka.client_errors import ClientErrors
from savegress_gw.kafka.connection import Brokers, BrokerWait, SaslOptions, StartupOptions, TlsOptions, \
    admin_settings, client_settings, masked, no_callbacks, wait_connected
from savegress_gw.kafka.delivery import BatchDelivery
from savegress_gw.kafka.errors import KafkaClientError, describe
from savegress_gw.kafka.headers import HEADER_EVENT_ID, HEADER_OPERATION, HEADER_TABLE, HEADER_TIMESTAMP, \
    event_headers
from savegress_gw.kafka.logs import LibrdkafkaLog, RateLimitedLog
from savegress_gw.kafka.routing import Route, Router
from savegress_gw.kafka.topics import TopicName, TopicOptions, create_topic, template_problem, \
    topic_template_problem
from savegress_gw.units import Duration, Size

QUEUE_FULL_WAIT_S = 1.0
"""How long ``send`` waits for room in librdkafka's queue before reporting the rest of a batch ERRORED."""
CLOSE_FLUSH_S = 2.0
"""``close`` waits this long for outstanding deliveries, then purges the rest (reported ERRORED)."""
FATAL_DRAIN_S = 1.0
"""After a fatal error, how long ``poll`` waits for the purged records' reports before it raises."""
WAIT_ATTEMPT_EVERY_S = 1.0
"""With ``startup.wait``, how often ``poll`` asks the brokers again (each attempt takes at most this long)."""
_LABEL = "kafka output"


class KafkaSinkError(GatewayError):
    """The Kafka sink could not start (brokers unreachable, authentication, a missing topic, ...),
    or its producer failed fatally (raised by ``poll``)."""


class KafkaSink(Sink):
    """Produces every event as one record with an idempotent producer; delivery reports drive the outcome.

    **Delivery.** A batch is reported once every one of its records has a delivery report (served
    by ``poll``/``flush``; one bound method of the batch's
    :class:`~savegress_gw.kafka.delivery.BatchDelivery` is the callback of all its records, and a
    failed report is matched back to its record by key and value): all delivered → DELIVERED; otherwise DELIVERED with ``failed`` indices,
    ``failed_status`` REJECTED when every failure is permanent
    (:data:`~savegress_gw.kafka.errors.REJECTED_CODES`, e.g. ``MSG_SIZE_TOO_LARGE``,
    ``INVALID_RECORD``, ``TOPIC_AUTHORIZATION_FAILED``), else ERRORED
    (``_MSG_TIMED_OUT``, ``NOT_ENOUGH_REPLICAS``, ``_TRANSPORT``, ...: the pipeline retries them,
    a permanent one among them is then rejected on its own). A batch where every record failed is
    reported with that status for the whole batch. ``reason`` names each error code, its message,
    the topic and how many events had it. ``produce()`` refusing a record (too large for
    ``max_request_size``, a partition that does not exist) rejects that record; a full local queue
    is waited on with ``poll(0.1)`` for up to :data:`QUEUE_FULL_WAIT_S`, then the rest of the batch
    is reported ERRORED. ``flush()`` is never relied on alone.

    **Acks and order.** ``acks`` (or, when unset, ``replication.ack_mode`` if the profile sets it;
    otherwise ``all``): ``all`` → ``acks=all`` with ``enable.idempotence=true`` (librdkafka keeps
    per-partition order and no duplicates through its own retries, at most 5 requests in flight);
    ``leader`` → ``acks=1`` and ``none`` → ``acks=0``, where librdkafka refuses idempotence, so it
    is off: ``leader`` then sends one request at a time per broker
    (``max.in.flight.requests.per.connection=1``) to keep order through retries, and ``none``
    counts a record delivered once written to the socket. ``message.timeout.ms`` (=
    ``delivery.timeout.ms``) is 300000: librdkafka keeps retrying a record for 5 minutes, which
    rides out broker restarts, leader elections and a lost ISR quorum without the pipeline seeing
    an error; only then does the record come back ``_MSG_TIMED_OUT`` (ERRORED, retried by the
    pipeline). The gateway's at-least-once promise holds either way; a batch retried by the
    pipeline after a timeout may land behind newer records of the same key.

    **Compression** is Kafka's own codec (one layer; the gateway never compresses records itself):
    ``compression`` when set, else derived from the profile's ``compression`` block: ``lz4`` or
    ``zstd`` → that codec with the block's level as ``compression.level``, ``hybrid`` → its
    ``large_algo`` and ``large_level``, ``enabled: false`` or ``none`` → none (no profile: none).
    librdkafka accepts levels up to 12, so higher zstd levels are capped at 12.

    **Topics and partitions.** ``topic_template`` (``${schema}``, ``${table}``, ``${database}``,
    ``${operation}``; ``${database}`` is the envelope's ``metadata.database``, read from the
    payload only when the template uses it) overrides ``topic``; characters Kafka does not allow
    become ``_``. ``partitioner: hash`` without ``partition_key`` lets librdkafka hash the record
    key with murmur2 (``murmur2_random``, the Java client's partitioner); with ``partition_key``
    (same variables) its murmur2 hash picks the partition. ``round-robin`` deals records to
    partitions in turn (per-key order is then lost). ``manual``: ``partition_key`` evaluates to the
    partition number; a value that is not a partition of the topic rejects the event.

    **Start.** ``open()`` fails within ``connect_timeout`` naming the brokers when none answers,
    at once on an authentication or TLS failure, and naming the topic when ``topics.create`` is
    false and ``topic`` does not exist. With ``startup.wait`` an unreachable cluster does not fail
    ``open()``: the sink holds the batches it is given (unproduced, in order; the source's buffer
    bounds them) and ``poll`` asks the brokers again every :data:`WAIT_ATTEMPT_EVERY_S`, logging
    ``waiting for kafka brokers`` (attempt, elapsed, brokers, last error) every
    ``startup.log_interval``; once one answers, the topic is created or checked as in ``open()``
    and the held batches are produced. An authentication or TLS failure, or a missing topic, then
    makes ``poll`` raise :class:`KafkaSinkError` (the worker exits with the reason). ``close``
    while still waiting reports the held batches ERRORED.

    **Fatal producer errors** (``error_cb`` with ``fatal``, e.g. an idempotence sequence the broker
    cannot accept) end the worker: the error is logged, the producer's queued and in-flight records
    are purged and their batches reported ERRORED (waiting up to :data:`FATAL_DRAIN_S` for the
    reports), then ``poll()`` raises :class:`KafkaSinkError` naming the fatal error, and keeps
    raising on every later call. The worker loop exits non-zero and the supervisor starts a fresh
    worker with a fresh producer, which reads again every frame the old one had not acknowledged
    (more than five restarts of one worker within a minute halt the gateway). A ``send`` made
    after the error and before that reports ERRORED with the reason.

    ``producer`` passes librdkafka settings through, applied last: it can override anything above
    (including ``acks``, ``enable.idempotence`` and ``message.timeout.ms``). ``producer_config``
    is the configuration actually used (password masked).
    """

    name = "kafka"

    class Config(ComponentConfig):
        brokers: Brokers = Field(min_length=1)
        """Bootstrap brokers, ``host:port`` (a list, or one comma-separated string)."""
        topic: TopicName = "cdc-events"
        """The topic every event goes to, unless ``topic_template`` is set."""
        topic_template: str | None = None
        """Topic per event, e.g. ``cdc.${schema}.${table}``; variables ``${schema}``, ``${table}``,
        ``${database}`` (``metadata.database``) and ``${operation}``. Overrides ``topic``."""
        acks: Literal["none", "leader", "all"] | None = None
        """Kafka acks (none → 0, leader → 1, all → all); overrides ``replication.ack_mode``. Unset:
        ``replication.ack_mode`` if the profile sets it, else ``all``. Only ``all`` is idempotent."""
        compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] | None = None
        """Kafka codec (librdkafka ``compression.type``); unset: derived from the profile's ``compression``."""
        compression_level: int | None = Field(None, ge=-1, le=12)
        """librdkafka ``compression.level`` (-1 codec default; gzip 0-9, lz4 0-12, zstd up to 12);
        unset: the profile's level when the codec is derived from it."""
        batch_size: Size = Field(1024 * 1024, ge=1)
        """Most bytes per partition batch (librdkafka ``batch.size``). 1MB (librdkafka's own default is
        ~1MB; the Java client's 16KB makes many small requests) amortizes request overhead and compresses better."""
        linger_ms: float = Field(5.0, ge=0, le=900_000)
        """How long librdkafka waits for a batch to fill before sending (``linger.ms``)."""
        max_request_size: Size = Field(1024 * 1024, ge=1000)
        """Largest record / request in bytes (librdkafka ``message.max.bytes``); a larger event is REJECTED."""
        partitioner: Literal["hash", "round-robin", "manual"] = "hash"
        """``hash``: murmur2 of ``partition_key`` (default: the record key, per-key order holds);
        ``round-robin``: partitions in turn; ``manual``: ``partition_key`` is the partition number."""
        partition_key: str | None = None
        """Template (same variables as ``topic_template``) for the partitioner; unset = the record key."""
        sasl: SaslOptions | None = None
        """SASL authentication; absent = none."""
        tls: TlsOptions | None = None
        """TLS to the brokers; absent = plaintext."""
        topics: TopicOptions = TopicOptions()
        """Creation of missing topics."""
        connect_timeout: Duration = Field(30.0, gt=0)
        """``open()`` fails when no broker answered within this time (at once on an authentication failure),
        unless ``startup.wait``."""
        startup: StartupOptions = StartupOptions()
        """Brokers unreachable at start: fail after ``connect_timeout`` (default) or wait for them, with progress."""
        producer: dict[str, str | int | bool | float] = {}
        """librdkafka producer settings passed through as is, applied last: they override everything
        the sink sets (``acks``, ``enable.idempotence``, ``message.timeout.ms``, ...)."""

        @field_validator("topic_template", "partition_key")
        @classmethod
        def _known_variables(cls, template: str | None) -> str | None:
            if template is not None and (problem := template_problem(template)):
                raise ValueError(problem)
            return template

        @field_validator("topic_template")
        @classmethod
        def _template_gives_topics(cls, template: str | None) -> str | None:
            if template is not None and (problem := topic_template_problem(template)):
                raise ValueError(problem)
            return template

        _no_callbacks = field_validator("producer")(no_callbacks)

        @model_validator(mode="after")
        def _manual_needs_key(self) -> "KafkaSink.Config":
            if self.partitioner == "manual" and self.partition_key is None:
                raise ValueError("partitioner manual needs partition_key (a template that gives the partition number)")
            return self

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._producer: Producer | None = None
        self._admin_client: AdminClient | None = None
        self.producer_config: dict[str, Any] = {}
        """The librdkafka configuration in use (set by ``open``; ``sasl.password`` masked)."""
        self._errors: ClientErrors | None = None
        self._purged = False
        self._outstanding = 0
        self._waiting: BrokerWait | None = None
        self._next_attempt = 0.0
        self._held: deque[tuple[Batch, DeliveryCallback]] = deque()

    # ------------------------------------------------------------------ lifecycle

    def open(self, context: Context) -> None:
        cfg = self.config
        try:
            producer = self._start(context)
            errors = self._errors
            assert errors is not None
            if cfg.startup.wait:
                self._waiting = BrokerWait(producer, cfg.brokers, errors.open_errors, self._log, _LABEL,
                                           cfg.startup.log_interval, WAIT_ATTEMPT_EVERY_S)
                metadata = self._waiting.attempt()
                if metadata is None:  # poll() keeps asking
                    self._next_attempt = time.monotonic() + WAIT_ATTEMPT_EVERY_S
                    return
                self._waiting = None
            else:
                metadata = wait_connected(producer, cfg.brokers, errors.open_errors, cfg.connect_timeout, _LABEL,
                                          "connect_timeout")
            self._connected(metadata)
        except KafkaClientError as exc:
            self._discard()
            raise KafkaSinkError(str(exc)) from None
        except BaseException:
            self._discard()
            raise

    def _connected(self, metadata: Any) -> None:
        """A broker answered with ``metadata``: create or check ``topic``, then report errors as warnings."""
        cfg, errors = self.config, self._errors
        assert errors is not None
        if cfg.topic_template is None:
            if cfg.topics.create:
                self._create_topic(cfg.topic, strict=True)
            elif cfg.topic not in metadata.topics:
                raise KafkaSinkError(
                    f"{_LABEL}: topic {cfg.topic!r} does not exist on {','.join(cfg.brokers)} and "
                    f"output.topics.create is false; create it or set topics.create: true")
        errors.opening = False
        errors.open_errors.clear()
        conf = self._config
        self._log.info("kafka producer ready", topic=cfg.topic_template or cfg.topic, acks=conf.get("acks"),
                       idempotence=conf.get("enable.idempotence"), compression=conf.get("compression.type"),
                       compression_level=conf.get("compression.level"))

    def _start(self, context: Context) -> Producer:
        """The producer, with no wait for the cluster (librdkafka connects in the background)."""
        cfg = self.config
        self._log = context.log.bind(sink="kafka", brokers=",".join(cfg.brokers))
        self._limited = RateLimitedLog(self._log)
        profile = context.profile
        self._min_isr = profile.replication.min_isr if profile is not None else None
        self._config = conf = self._build_config(context)
        self.producer_config = masked(conf)
        self._errors = errors = ClientErrors(self._limited, "kafka producer failed fatally; purging its records, "
                                                           "the worker restarts")
        errors.opening = True
        try:
            self._producer = Producer({**conf, "error_cb": errors, "logger": LibrdkafkaLog(self._limited)})
        except (KafkaException, ValueError, TypeError) as exc:
            raise KafkaSinkError(f"{_LABEL}: invalid producer configuration: {describe(exc)}") from None
        self._router = Router(cfg.topic, cfg.topic_template, cfg.partitioner, cfg.partition_key, self._producer,
                              self._new_topic)
        return self._producer

    def _build_config(self, context: Context) -> dict[str, Any]:
        cfg = self.config
        profile = context.profile
        acks = cfg.acks
        if acks is None and profile is not None and "ack_mode" in profile.replication.model_fields_set:
            acks = profile.replication.ack_mode
        acks = acks or "all"
        client_id = f"{profile.gateway.id if profile is not None else 'savegress-gw'}-{context.process}"
        conf: dict[str, Any] = {
            **client_settings(cfg.brokers, client_id, cfg.sasl, cfg.tls),
            "acks": {"none": "0", "leader": "1", "all": "all"}[acks],
            "enable.idempotence": acks == "all",
            "message.timeout.ms": 300_000,
            "linger.ms": cfg.linger_ms,
            "batch.size": cfg.batch_size,
            "message.max.bytes": cfg.max_request_size,
            "queue.buffering.max.messages": 1_000_000,
            "partitioner": "murmur2_random",
            "allow.auto.create.topics": cfg.topics.create,
            **codec_settings(cfg.compression, cfg.compression_level, profile),
        }
        if acks == "all":
            conf["max.in.flight.requests.per.connection"] = 5
        elif acks == "leader":
            conf["max.in.flight.requests.per.connection"] = 1
        conf.update(cfg.producer)
        return conf

    def _new_topic(self, topic: str) -> None:
        """A templated topic seen for the first time: create it when ``topics.create`` (failures logged)."""
        if self.config.topics.create:
            self._create_topic(topic, strict=False)

    def _create_topic(self, topic: str, strict: bool) -> None:
        """Create ``topic`` (already existing is fine); raise when ``strict``, else log, on failure."""
        options = self.config.topics
        settings = {"min.insync.replicas": str(self._min_isr)} if self._min_isr else {}
        if self._admin_client is None:
            self._admin_client = AdminClient({**admin_settings(self._config), "logger": LibrdkafkaLog(self._limited)})
        try:
            created = create_topic(self._admin_client, topic, options, settings,
                                   min(30.0, self.config.connect_timeout), _LABEL)
        except KafkaClientError as exc:
            if strict:
                raise
            self._log.warning(str(exc))
            return
        if created:
            self._log.info("created kafka topic", topic=topic, partitions=options.partitions,
                           replication_factor=options.replication_factor, **settings)

    def close(self) -> None:
        producer = self._producer
        if producer is None:
            return
        while self._held:
            _, done = self._held.popleft()
            done(Outcome(Status.ERRORED,
                         reason=f"closed while waiting for kafka brokers {','.join(self.config.brokers)}"))
        try:
            if self._outstanding:
                producer.flush(CLOSE_FLUSH_S)
            if self._outstanding:
                producer.purge(in_queue=True, in_flight=True, blocking=False)
                deadline = time.monotonic() + 1.0
                while self._outstanding and time.monotonic() < deadline:
                    producer.poll(0.05)
        finally:
            self._discard()

    def _discard(self) -> None:
        self._producer = None
        self._admin_client = None
        self._waiting = None

    # ------------------------------------------------------------------ delivery

    def send(self, batch: Batch, done: DeliveryCallback) -> None:
        n = len(batch)
        if not n:
            done(Outcome(Status.DELIVERED))
            return
        producer, errors = self._producer, self._errors
        assert producer is not None and errors is not None, "open() first"
        if errors.fatal is not None:
            self._serve_fatal()
            done(Outcome(Status.ERRORED, reason=f"kafka producer failed fatally (restart the worker): {errors.fatal}"))
            return
        if self._waiting is not None:
            self._held.append((batch, done))
            return
        self._outstanding += 1
        payloads, keys = batch.payloads, batch.keys
        delivery = BatchDelivery(n, done, ("max_request_size", self.config.max_request_size), self._finished,
                                 keys, payloads)
        report = delivery.report
        produce = producer.produce
        routes = self._router.routes(batch, delivery) if self._router.needed else None
        topic, partition = self.config.topic, -1
        stamp_at, stamp_header = None, ("", "")  # events of one read or transaction share their time
        i = 0
        try:
            for i, payload, key, id_, op, table, stamp in zip(
                    range(n), payloads, keys, batch.ids, batch.operations, batch.tables, batch.timestamps_ms):
                if routes is not None:
                    route = routes[i]
                    if route is None:
                        continue  # failed while routing, already counted
                    topic, partition = route
                if stamp != stamp_at:
                    stamp_at, stamp_header = stamp, (HEADER_TIMESTAMP, str(stamp))
                try:  # positional (topic, value, key, partition, callback, on_delivery, timestamp 0 = now,
                    # headers): keyword arguments cost ~0.6 us a record in confluent-kafka's argument parsing
                    produce(topic, payload, key, partition, report, None, 0,
                            [(HEADER_EVENT_ID, id_), (HEADER_OPERATION, op), (HEADER_TABLE, table), stamp_header])
                except BufferError:
                    if not self._produce_when_room(delivery, batch, i, (topic, partition)):
                        delivery.fail_rest(range(i, n), "_QUEUE_FULL", f"librdkafka's queue stayed full for "
                                           f"{QUEUE_FULL_WAIT_S:g}s ({len(producer)} records waiting)", routes)
                        break
                except KafkaException as exc:
                    delivery.fail(i, exc.args[0], topic, len(payload) + len(key))
        except Exception as exc:  # a bug or a malformed batch: the records not yet produced are ERRORED
            self._log.exception("kafka send failed")
            delivery.fail_rest(range(i, n), type(exc).__name__, str(exc), routes)
        delivery.release()

    def _produce_when_room(self, delivery: BatchDelivery, batch: Batch, i: int, route: Route) -> bool:
        """librdkafka's queue is full: serve callbacks and retry record ``i`` for up to
        :data:`QUEUE_FULL_WAIT_S`. False if it is still full (record ``i`` not produced)."""
        producer = self._producer
        assert producer is not None
        topic, partition = route
        deadline = time.monotonic() + QUEUE_FULL_WAIT_S
        while time.monotonic() < deadline:
            producer.poll(0.1)
            try:
                producer.produce(topic, batch.payloads[i], batch.keys[i], partition, on_delivery=delivery.report,
                                 headers=event_headers(batch, i))
                return True
            except BufferError:
                continue
            except KafkaException as exc:
                delivery.fail(i, exc.args[0], topic, len(batch.payloads[i]) + len(batch.keys[i]))
                return True
        return False

    def poll(self, timeout_s: float) -> None:
        """Serve delivery reports; after a fatal producer error, purge and raise :class:`KafkaSinkError`.
        While waiting for the brokers (``startup.wait``), ask them again when due."""
        producer, errors = self._producer, self._errors
        if producer is None or errors is None:
            return
        if self._waiting is not None:
            self._keep_waiting()
        producer.poll(timeout_s)
        if errors.fatal is not None:
            self._serve_fatal()
            raise KafkaSinkError(f"kafka producer failed fatally, the worker must restart: {errors.fatal}")

    def _keep_waiting(self) -> None:
        """One more attempt to reach the brokers when due; once connected, produce the held batches."""
        waiting = self._waiting
        now = time.monotonic()
        if waiting is None or now < self._next_attempt:
            return
        self._next_attempt = now + WAIT_ATTEMPT_EVERY_S
        try:
            metadata = waiting.attempt()
            if metadata is None:
                return
            self._connected(metadata)
        except KafkaClientError as exc:
            raise KafkaSinkError(str(exc)) from None
        self._waiting = None
        self._log.info("kafka brokers reachable; streaming", attempts=waiting.attempts,
                       waited_s=round(waiting.elapsed_s, 1), held_batches=len(self._held))
        while self._held:
            self.send(*self._held.popleft())

    def flush(self, timeout_s: float) -> bool:
        producer = self._producer
        if producer is None:
            return self._outstanding == 0
        deadline = time.monotonic() + timeout_s
        while self._waiting is not None and time.monotonic() < deadline:
            self._keep_waiting()
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if self._waiting is not None:
            return False
        producer.flush(max(0.0, deadline - time.monotonic()))
        while self._outstanding and time.monotonic() < deadline:  # reports that flush left queued
            producer.poll(min(0.05, max(0.0, deadline - time.monotonic())))
        producer.poll(0)
        return self._outstanding == 0

    # ------------------------------------------------------------------ errors

    def _serve_fatal(self) -> None:
        """Purge what a fatally failed producer still holds (once) and wait up to :data:`FATAL_DRAIN_S`
        for the reports, so every outstanding batch is reported ERRORED."""
        producer = self._producer
        if producer is None or self._purged:
            return
        self._purged = True
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        deadline = time.monotonic() + FATAL_DRAIN_S
        producer.poll(0)
        while self._outstanding and time.monotonic() < deadline:
            producer.poll(0.05)

    def _finished(self) -> None:
        self._outstanding -= 1


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(KafkaSink)
