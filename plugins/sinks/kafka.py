"""The Kafka sink: every event as one Kafka record, through an idempotent librdkafka producer.

``output: {type: kafka, brokers: [kafka1:9092], topic: cdc-events, topic_template: "cdc.${schema}.${table}",
acks: all, compression: zstd, batch_size: 1MB, linger_ms: 5, max_request_size: 1048576, partitioner: hash,
partition_key: "${table}", sasl: {...}, tls: {...}, topics: {create: true, partitions: 6},
connect_timeout: 30s, producer: {...}}`` (``spec/reference.md`` 3.4 and 4.2).

Record format (``spec/reference.md`` 3.4): key ``table:pk`` (the batch's ``keys`` column), value the
JSON envelope exactly as the gateway encoded it, headers ``savegress-event-id``,
``savegress-operation``, ``savegress-table`` and ``savegress-timestamp`` (event time in Unix
milliseconds, as a decimal string). The record's own Kafka timestamp is the producer's time, so
broker retention never deletes a replayed old event on arrival.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from functools import partial
from typing import Annotated, Any, Callable, Literal

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from savegress_gw import Batch, Component, ComponentConfig, Context, Outcome, Sink, Status, hookimpl
from savegress_gw.components import DeliveryCallback
from savegress_gw.errors import GatewayError
from savegress_gw.units import Duration, Size

TEMPLATE_VARIABLES = ("schema", "table", "database", "operation")
"""What ``topic_template`` and ``partition_key`` may use, expanded per event."""
_TEMPLATE_VAR = re.compile(r"\$\{([^}]*)\}")
_TOPIC_ILLEGAL = re.compile(r"[^a-zA-Z0-9._-]")
_TOPIC_MAX = 249
_BROKER = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\s:/,\[\]]+):(\d{1,5})$")

# Header names, built once. They must be str: confluent-kafka would turn a bytes name into "b'...'".
_H_ID = "savegress-event-id"
_H_OP = "savegress-operation"
_H_TABLE = "savegress-table"
_H_TS = "savegress-timestamp"

_CALLBACK_KEYS = frozenset({"error_cb", "on_delivery", "logger", "stats_cb", "throttle_cb", "oauth_cb", "dr_cb",
                            "dr_msg_cb", "on_commit"})

_NO_ROUTE = object()
_NO_ROUTES = itertools.repeat(_NO_ROUTE)
"""Stands for the routes of a batch that needs none (one topic, librdkafka's partitioner)."""

QUEUE_FULL_WAIT_S = 1.0
"""How long ``send`` waits for room in librdkafka's queue before reporting the rest of a batch ERRORED."""
PARTITION_COUNT_TTL_S = 300.0
"""Partition counts (for ``round-robin``, ``manual`` and ``hash`` with a ``partition_key``) are re-read this often."""
CLOSE_FLUSH_S = 2.0
"""``close`` waits this long for outstanding deliveries, then purges the rest (reported ERRORED)."""
_LOG_EVERY_S = 10.0

_E = KafkaError
REJECTED_CODES = frozenset(code for code in (
    getattr(_E, "MSG_SIZE_TOO_LARGE", None), getattr(_E, "_MSG_SIZE_TOO_LARGE", None),
    getattr(_E, "INVALID_RECORD", None), getattr(_E, "TOPIC_AUTHORIZATION_FAILED", None),
    getattr(_E, "TOPIC_EXCEPTION", None), getattr(_E, "INVALID_TOPIC_EXCEPTION", None),
    getattr(_E, "RECORD_LIST_TOO_LARGE", None), getattr(_E, "UNSUPPORTED_FOR_MESSAGE_FORMAT", None),
    getattr(_E, "POLICY_VIOLATION", None), getattr(_E, "_INVALID_ARG", None), getattr(_E, "_UNKNOWN_PARTITION", None),
    getattr(_E, "_KEY_SERIALIZATION", None), getattr(_E, "_VALUE_SERIALIZATION", None),
) if code is not None)
"""Delivery errors that no retry can fix: the events are REJECTED. Every other error is ERRORED (retried)."""
_OPEN_FAILS_FAST = frozenset({_E._AUTHENTICATION, _E._SSL,
                              getattr(_E, "SASL_AUTHENTICATION_FAILED", _E._AUTHENTICATION)})
"""Errors that end ``open()`` at once instead of waiting out ``connect_timeout``."""


class KafkaSinkError(GatewayError):
    """The Kafka sink could not start (brokers unreachable, authentication, a missing topic, ...)."""


# --------------------------------------------------------------------------------------------- config


def _split_brokers(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _template_problem(template: str) -> str | None:
    unknown = [name for name in _TEMPLATE_VAR.findall(template) if name not in TEMPLATE_VARIABLES]
    if unknown:
        known = ", ".join(f"${{{name}}}" for name in TEMPLATE_VARIABLES)
        return f"unknown template variable ${{{unknown[0]}}} in {template!r} (known: {known})"
    return None


def _topic_problem(name: str) -> str | None:
    if not name or name in (".", ".."):
        return f"{name!r} is not a valid Kafka topic name"
    if len(name) > _TOPIC_MAX:
        return f"topic name {name[:40]!r}... is longer than {_TOPIC_MAX} characters"
    if _TOPIC_ILLEGAL.search(name):
        return f"topic name {name!r} may hold only letters, digits, '.', '_' and '-'"
    return None


class SaslOptions(ComponentConfig):
    enabled: bool = True
    """Authenticate with SASL (on by default once the block is given)."""
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    """SASL mechanism."""
    username: str = ""
    """SASL user name (required when enabled)."""
    password: SecretStr = SecretStr("")
    """SASL password (required when enabled; use ``${KAFKA_PASSWORD}``, it is never logged)."""

    @model_validator(mode="after")
    def _credentials(self) -> "SaslOptions":
        if self.enabled and (not self.username or not self.password.get_secret_value()):
            raise ValueError("sasl needs username and password when enabled")
        return self


class TlsOptions(ComponentConfig):
    enabled: bool = True
    """Connect over TLS (on by default once the block is given); with ``sasl``: SASL_SSL."""
    ca_file: str | None = None
    """CA bundle (PEM) that verifies the brokers; default: the system's trust store."""
    cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS; needs ``key_file``."""
    key_file: str | None = None
    """Private key (PEM) of ``cert_file``."""
    skip_verify: bool = False
    """Accept any broker certificate and host name (testing only)."""

    @model_validator(mode="after")
    def _pair(self) -> "TlsOptions":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together")
        return self


class TopicOptions(ComponentConfig):
    create: bool = True
    """Create missing topics with the settings below: ``topic`` in ``open()``, each templated topic
    before its first record. ``false``: the gateway never creates topics (broker auto-creation is
    switched off for its producer too) and ``open()`` fails when ``topic`` does not exist."""
    partitions: int = Field(6, ge=1)
    """Partitions of the topics the gateway creates."""
    replication_factor: int = Field(-1, ge=-1)
    """Replication factor of the topics the gateway creates; -1 = the broker's ``default.replication.factor``.
    ``replication.min_isr`` becomes their ``min.insync.replicas``."""

    @field_validator("replication_factor")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("replication_factor must be -1 (broker default) or at least 1")
        return value


class KafkaSink(Sink):
    """Produces every event as one record with an idempotent producer; delivery reports drive the outcome.

    **Delivery.** A batch is reported once every one of its records has a delivery report (served
    by ``poll``/``flush``): all delivered → DELIVERED; otherwise DELIVERED with ``failed`` indices,
    ``failed_status`` REJECTED when every failure is permanent (:data:`REJECTED_CODES`, e.g.
    ``MSG_SIZE_TOO_LARGE``, ``INVALID_RECORD``, ``TOPIC_AUTHORIZATION_FAILED``), else ERRORED
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
    false and ``topic`` does not exist.

    **Fatal producer errors** (``error_cb`` with ``fatal``, e.g. an idempotence sequence the broker
    cannot accept) are logged; the producer's queued and in-flight records are purged and reported
    ERRORED, and every later ``send`` reports ERRORED with the reason. The producer is not rebuilt:
    the pipeline keeps retrying until the worker is restarted.

    ``producer`` passes librdkafka settings through, applied last: it can override anything above
    (including ``acks``, ``enable.idempotence`` and ``message.timeout.ms``). ``producer_config``
    is the configuration actually used (password masked).
    """

    name = "kafka"

    class Config(ComponentConfig):
        brokers: Annotated[list[str], BeforeValidator(_split_brokers)] = Field(min_length=1)
        """Bootstrap brokers, ``host:port`` (a list, or one comma-separated string)."""
        topic: str = "cdc-events"
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
        """``open()`` fails when no broker answered within this time (at once on an authentication failure)."""
        producer: dict[str, str | int | bool | float] = {}
        """librdkafka producer settings passed through as is, applied last: they override everything
        the sink sets (``acks``, ``enable.idempotence``, ``message.timeout.ms``, ...)."""

        @field_validator("brokers")
        @classmethod
        def _host_port(cls, brokers: list[str]) -> list[str]:
            for broker in brokers:
                match = _BROKER.match(broker)
                if not match or not 0 < int(match[2]) < 65536:
                    raise ValueError(f"broker {broker!r} must be host:port (e.g. kafka1:9092)")
            return brokers

        @field_validator("topic")
        @classmethod
        def _legal_topic(cls, topic: str) -> str:
            if problem := _topic_problem(topic):
                raise ValueError(problem)
            return topic

        @field_validator("topic_template", "partition_key")
        @classmethod
        def _known_variables(cls, template: str | None) -> str | None:
            if template is not None and (problem := _template_problem(template)):
                raise ValueError(problem)
            return template

        @field_validator("topic_template")
        @classmethod
        def _template_gives_topics(cls, template: str | None) -> str | None:
            if template is not None:
                sample = _TEMPLATE_VAR.sub("x", template)
                if problem := _topic_problem(sample):
                    raise ValueError(f"topic_template: {problem}")
            return template

        @field_validator("producer")
        @classmethod
        def _no_callbacks(cls, settings: dict[str, Any]) -> dict[str, Any]:
            callbacks = sorted(set(settings) & _CALLBACK_KEYS)
            if callbacks:
                raise ValueError(f"{callbacks[0]} is a callback the sink sets itself")
            return settings

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
        self._fatal: str | None = None
        self._purge_pending = False
        self._outstanding = 0
        self._routes: dict[tuple, tuple[str, int] | _Unroutable] = {}
        self._routes_at = 0.0
        self._known_topics: set[str] = set()
        self._partition_counts: dict[str, tuple[int, float]] = {}
        self._round_robin: dict[str, int] = {}
        self._log_times: dict[Any, tuple[float, int]] = {}
        self._open_errors: list[KafkaError] = []
        self._opening = False

    # ------------------------------------------------------------------ lifecycle

    def open(self, context: Context) -> None:
        cfg = self.config
        self._log = context.log.bind(sink="kafka", brokers=",".join(cfg.brokers))
        profile = context.profile
        self._min_isr = profile.replication.min_isr if profile is not None else None
        conf = self._build_config(context)
        self._config = conf
        self.producer_config = {k: ("***" if k == "sasl.password" else v) for k, v in conf.items()}
        self._template = cfg.topic_template
        self._uses_database = bool(self._template and "${database}" in self._template) or bool(
            cfg.partition_key and "${database}" in cfg.partition_key)
        self._needs_route = self._template is not None or cfg.partitioner != "hash" or cfg.partition_key is not None
        self._opening, self._open_errors = True, []
        try:
            try:
                self._producer = Producer({**conf, "error_cb": self._on_error, "logger": _LibrdkafkaLog(self)})
            except (KafkaException, ValueError, TypeError) as exc:
                raise KafkaSinkError(f"kafka output: invalid producer configuration: {_describe(exc)}") from None
            metadata = self._wait_connected()
            if self._template is None:
                if cfg.topics.create:
                    self._create_topic(cfg.topic, strict=True)
                elif cfg.topic not in metadata.topics:
                    raise KafkaSinkError(
                        f"kafka output: topic {cfg.topic!r} does not exist on {','.join(cfg.brokers)} and "
                        f"output.topics.create is false; create it or set topics.create: true")
                self._known_topics.add(cfg.topic)
        except BaseException:
            self._discard()
            raise
        finally:
            self._opening, self._open_errors = False, []
        self._log.info("kafka producer ready", topic=self._template or cfg.topic, acks=conf.get("acks"),
                       idempotence=conf.get("enable.idempotence"), compression=conf.get("compression.type"),
                       compression_level=conf.get("compression.level"))

    def _build_config(self, context: Context) -> dict[str, Any]:
        cfg = self.config
        profile = context.profile
        acks = cfg.acks
        if acks is None and profile is not None and "ack_mode" in profile.replication.model_fields_set:
            acks = profile.replication.ack_mode
        acks = acks or "all"
        conf: dict[str, Any] = {
            "bootstrap.servers": ",".join(cfg.brokers),
            "client.id": f"{profile.gateway.id if profile is not None else 'savegress-gw'}-{context.process}",
            "acks": {"none": "0", "leader": "1", "all": "all"}[acks],
            "enable.idempotence": acks == "all",
            "message.timeout.ms": 300_000,
            "linger.ms": cfg.linger_ms,
            "batch.size": cfg.batch_size,
            "message.max.bytes": cfg.max_request_size,
            "queue.buffering.max.messages": 1_000_000,
            "partitioner": "murmur2_random",
            "socket.keepalive.enable": True,
            "allow.auto.create.topics": cfg.topics.create,
        }
        if acks == "all":
            conf["max.in.flight.requests.per.connection"] = 5
        elif acks == "leader":
            conf["max.in.flight.requests.per.connection"] = 1
        codec, level = cfg.compression, cfg.compression_level
        if codec is None:
            codec, derived_level = profile_codec(profile)
            if level is None:
                level = derived_level
        conf["compression.type"] = codec
        if level is not None and codec != "none":
            conf["compression.level"] = max(-1, min(12, level))
        sasl, tls = cfg.sasl, cfg.tls
        sasl_on, tls_on = bool(sasl and sasl.enabled), bool(tls and tls.enabled)
        conf["security.protocol"] = {(False, False): "PLAINTEXT", (True, False): "SASL_PLAINTEXT",
                                     (False, True): "SSL", (True, True): "SASL_SSL"}[(sasl_on, tls_on)]
        if sasl_on:
            assert sasl is not None
            conf.update({"sasl.mechanism": sasl.mechanism, "sasl.username": sasl.username,
                         "sasl.password": sasl.password.get_secret_value()})
        if tls_on:
            assert tls is not None
            for key, value in (("ssl.ca.location", tls.ca_file), ("ssl.certificate.location", tls.cert_file),
                               ("ssl.key.location", tls.key_file)):
                if value:
                    conf[key] = value
            if tls.skip_verify:
                conf["enable.ssl.certificate.verification"] = False
                conf["ssl.endpoint.identification.algorithm"] = "none"
        conf.update(cfg.producer)
        return conf

    def _wait_connected(self) -> Any:
        """Metadata from the cluster, or :class:`KafkaSinkError` within ``connect_timeout``."""
        producer = self._producer
        assert producer is not None
        brokers = ",".join(self.config.brokers)
        timeout = self.config.connect_timeout
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            producer.poll(0)
            for err in self._open_errors:
                if err.code() in _OPEN_FAILS_FAST or err.fatal():
                    kind = "authentication failed" if err.code() != _E._SSL else "TLS handshake failed"
                    raise KafkaSinkError(f"kafka output: {kind} with brokers {brokers}: {err.name()}: {err.str()}")
            if self._open_errors:
                err = self._open_errors[-1]
                last = f"{err.name()}: {err.str()}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaSinkError(f"kafka output: cannot reach brokers {brokers} within "
                                     f"connect_timeout {timeout:g}s ({last})")
            try:
                return producer.list_topics(timeout=min(1.0, max(0.05, remaining)))
            except KafkaException as exc:
                if not self._open_errors:
                    last = _describe(exc)

    def _admin(self) -> AdminClient:
        if self._admin_client is None:
            prefixes = ("bootstrap.", "security.", "sasl.", "ssl.", "client.", "socket.", "broker.", "enable.ssl",
                        "reconnect.", "api.version", "metadata.")
            conf = {k: v for k, v in self._config.items() if k.startswith(prefixes)}
            self._admin_client = AdminClient({**conf, "logger": _LibrdkafkaLog(self)})
        return self._admin_client

    def _create_topic(self, topic: str, strict: bool) -> None:
        """Create ``topic`` (already existing is fine); raise when ``strict``, else log, on failure."""
        try:
            self._try_create_topic(topic, strict)
        finally:
            if self._admin_client is not None:
                self._admin_client.poll(0)  # its log lines

    def _try_create_topic(self, topic: str, strict: bool) -> None:
        options = self.config.topics
        settings = {"min.insync.replicas": str(self._min_isr)} if self._min_isr else {}
        timeout = min(30.0, self.config.connect_timeout)
        new = NewTopic(topic, num_partitions=options.partitions, replication_factor=options.replication_factor,
                       config=settings)
        try:
            future = self._admin().create_topics([new], request_timeout=timeout, operation_timeout=timeout)[topic]
            future.result(timeout=timeout + 5)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.code() == _E.TOPIC_ALREADY_EXISTS:
                return
            message = (f"kafka output: could not create topic {topic!r} (partitions {options.partitions}, "
                       f"replication factor {options.replication_factor}{', ' if settings else ''}"
                       f"{', '.join(f'{k}={v}' for k, v in settings.items())}): {_describe(exc)}")
            if strict:
                raise KafkaSinkError(message) from None
            self._log.warning(message)
            return
        except Exception as exc:  # a timed-out future
            message = f"kafka output: could not create topic {topic!r}: {type(exc).__name__}: {exc}"
            if strict:
                raise KafkaSinkError(message) from None
            self._log.warning(message)
            return
        self._log.info("created kafka topic", topic=topic, partitions=options.partitions,
                       replication_factor=options.replication_factor, **settings)

    def close(self) -> None:
        producer = self._producer
        if producer is None:
            return
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

    # ------------------------------------------------------------------ delivery

    def send(self, batch: Batch, done: DeliveryCallback) -> None:
        n = len(batch)
        if not n:
            done(Outcome(Status.DELIVERED))
            return
        producer = self._producer
        assert producer is not None, "open() first"
        if self._fatal is not None:
            self._serve_fatal()
            done(Outcome(Status.ERRORED, reason=f"kafka producer failed fatally (restart the worker): {self._fatal}"))
            return
        self._outstanding += 1
        pending = _Pending(self, n, done)
        report = pending.report
        produce = producer.produce
        routes = self._batch_routes(batch, pending) if self._needs_route else None
        topic, partition = self.config.topic, -1
        i = 0
        try:
            for i, payload, key, id_, op, table, stamp, route in zip(
                    range(n), batch.payloads, batch.keys, batch.ids, batch.operations, batch.tables,
                    batch.timestamps_ms, routes or _NO_ROUTES):
                if route is not _NO_ROUTE:
                    if route is None:
                        continue  # failed while routing, already counted
                    topic, partition = route
                try:
                    produce(topic, payload, key, partition, on_delivery=partial(report, i),
                            headers=[(_H_ID, id_), (_H_OP, op), (_H_TABLE, table), (_H_TS, str(stamp))])
                except BufferError:
                    if not self._produce_when_room(pending, batch, i, topic, partition):
                        pending.fail_rest(range(i, n), "_QUEUE_FULL", f"librdkafka's queue stayed full for "
                                          f"{QUEUE_FULL_WAIT_S:g}s ({len(producer)} records waiting)", routes)
                        break
                except KafkaException as exc:
                    pending.fail(i, exc.args[0], topic, len(payload) + len(key))
        except Exception as exc:  # a bug or a malformed batch: the records not yet produced are ERRORED
            self._log.exception("kafka send failed")
            pending.fail_rest(range(i, n), type(exc).__name__, str(exc), routes)
        pending.release()

    def _produce_when_room(self, pending: "_Pending", batch: Batch, i: int, topic: str, partition: int) -> bool:
        """librdkafka's queue is full: serve callbacks and retry record ``i`` for up to
        :data:`QUEUE_FULL_WAIT_S`. False if it is still full (record ``i`` not produced)."""
        producer = self._producer
        assert producer is not None
        deadline = time.monotonic() + QUEUE_FULL_WAIT_S
        while time.monotonic() < deadline:
            producer.poll(0.1)
            try:
                producer.produce(topic, batch.payloads[i], batch.keys[i], partition,
                                 on_delivery=partial(pending.report, i),
                                 headers=[(_H_ID, batch.ids[i]), (_H_OP, batch.operations[i]),
                                          (_H_TABLE, batch.tables[i]), (_H_TS, str(batch.timestamps_ms[i]))])
                return True
            except BufferError:
                continue
            except KafkaException as exc:
                pending.fail(i, exc.args[0], topic, len(batch.payloads[i]) + len(batch.keys[i]))
                return True
        return False

    def _batch_routes(self, batch: Batch, pending: "_Pending") -> list[tuple[str, int] | None]:
        """(topic, partition) of each event (-1 = librdkafka's partitioner); None for events that failed here."""
        now = time.monotonic()
        if now - self._routes_at > PARTITION_COUNT_TTL_S:
            self._routes.clear()
            self._routes_at = now
        routes = self._routes
        round_robin = self.config.partitioner == "round-robin"
        uses_database = self._uses_database
        out: list[tuple[str, int] | None] = []
        append = out.append
        schemas, tables, ops, payloads = batch.schemas, batch.tables, batch.operations, batch.payloads
        for i in range(len(batch)):
            key = (schemas[i], tables[i], ops[i], _database(payloads[i]) if uses_database else "")
            route = routes.get(key)
            if route is None:
                route = self._route(key)
                if not isinstance(route, _Unroutable) or route.status is Status.REJECTED:
                    routes[key] = route
            if isinstance(route, _Unroutable):
                pending.unroutable(i, route)
                append(None)
            elif round_robin:
                topic = route[0]
                count = self._partition_count(topic)
                if count is None:
                    pending.unroutable(i, _Unroutable(Status.ERRORED, "_UNKNOWN_PARTITION",
                                                      f"partition count of topic {topic!r} not known yet"))
                    append(None)
                    continue
                turn = self._round_robin.get(topic, 0)
                self._round_robin[topic] = turn + 1
                append((topic, turn % count))
            else:
                append(route)
        return out

    def _route(self, key: tuple[str, str, str, str]) -> "tuple[str, int] | _Unroutable":
        """Topic and partition of events with these (schema, table, operation, database)."""
        cfg = self.config
        values = dict(zip(("schema", "table", "operation", "database"), key))
        if self._template is not None:
            topic = _TOPIC_ILLEGAL.sub("_", _expand(self._template, values))[:_TOPIC_MAX]
            if problem := _topic_problem(topic):
                return _Unroutable(Status.REJECTED, "_INVALID_TOPIC",
                                   f"topic_template {self._template!r} gives no valid topic: {problem}")
            if topic not in self._known_topics:
                if cfg.topics.create:
                    self._create_topic(topic, strict=False)
                self._known_topics.add(topic)
        else:
            topic = cfg.topic
        if cfg.partitioner == "round-robin" or cfg.partition_key is None:
            return topic, -1
        value = _expand(cfg.partition_key, values)
        count = self._partition_count(topic)
        if cfg.partitioner == "manual":
            try:
                partition = int(value)
            except ValueError:
                return _Unroutable(Status.REJECTED, "_INVALID_PARTITION",
                                   f"partition_key {cfg.partition_key!r} gives {value!r}, not a partition number")
            if count is not None and not 0 <= partition < count:
                return _Unroutable(Status.REJECTED, "_UNKNOWN_PARTITION",
                                   f"partition {partition} does not exist in topic {topic!r} ({count} partitions)")
            return topic, partition
        if count is None:
            return _Unroutable(Status.ERRORED, "_UNKNOWN_PARTITION",
                               f"partition count of topic {topic!r} not known yet")
        return topic, (murmur2(value.encode()) & 0x7FFFFFFF) % count

    def _partition_count(self, topic: str) -> int | None:
        now = time.monotonic()
        cached = self._partition_counts.get(topic)
        if cached is not None and now - cached[1] < PARTITION_COUNT_TTL_S:
            return cached[0]
        producer = self._producer
        assert producer is not None
        try:
            metadata = producer.list_topics(topic, timeout=5)
        except KafkaException:
            return cached[0] if cached else None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return cached[0] if cached else None
        self._partition_counts[topic] = (len(found.partitions), now)
        return len(found.partitions)

    def poll(self, timeout_s: float) -> None:
        producer = self._producer
        if producer is not None:
            producer.poll(timeout_s)
            if self._purge_pending:
                self._serve_fatal()

    def flush(self, timeout_s: float) -> bool:
        producer = self._producer
        if producer is None:
            return self._outstanding == 0
        deadline = time.monotonic() + timeout_s
        producer.flush(timeout_s)
        while self._outstanding and time.monotonic() < deadline:  # reports that flush left queued
            producer.poll(min(0.05, max(0.0, deadline - time.monotonic())))
        producer.poll(0)
        return self._outstanding == 0

    # ------------------------------------------------------------------ errors and logs

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb (served by poll): fatal errors stop the producer, the rest are logged."""
        if err.fatal():
            if self._fatal is None:
                self._fatal = f"{err.name()}: {err.str()}"
                self._purge_pending = True
                self._log.error("kafka producer failed fatally; every send reports ERRORED until the worker "
                                "restarts", code=err.name(), reason=err.str())
        if self._opening:
            if len(self._open_errors) < 100:
                self._open_errors.append(err)
        elif not err.fatal():
            self._rate_limited("warning", ("error", err.code()), "kafka client error", code=err.name(),
                               reason=err.str())

    def _serve_fatal(self) -> None:
        """Purge what a fatally failed producer still holds, so every outstanding batch reports ERRORED."""
        producer = self._producer
        if producer is not None and self._purge_pending:
            self._purge_pending = False
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)

    def _rate_limited(self, level: str, key: Any, event: str, **fields: Any) -> None:
        now = time.monotonic()
        last, suppressed = self._log_times.get(key, (0.0, 0))
        if now - last < _LOG_EVERY_S:
            self._log_times[key] = (last, suppressed + 1)
            return
        self._log_times[key] = (now, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        getattr(self._log, level)(event, **fields)

    def _finished(self, pending: "_Pending") -> None:
        self._outstanding -= 1


class _Unroutable:
    """Why events of one (schema, table, operation, database) cannot be produced, and with what status."""

    __slots__ = ("status", "code", "message")

    def __init__(self, status: Status, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


class _Pending:
    """One batch in flight: counts its records down and calls ``done`` once, when the last one reported."""

    __slots__ = ("sink", "remaining", "done", "failures", "size")

    def __init__(self, sink: KafkaSink, size: int, done: DeliveryCallback) -> None:
        self.sink = sink
        self.size = size
        self.remaining = size + 1  # +1 held by send() until every record is produced or failed
        self.done: DeliveryCallback | None = done
        self.failures: list[tuple[int, Status, str, str]] = []  # (index, status, error code, message)

    def report(self, index: int, err: KafkaError | None, msg: Any) -> None:
        """The delivery callback of record ``index`` (bound with functools.partial)."""
        if err is not None:
            self.failures.append((index, _status_of(err), err.name(), f"{err.str()} (topic {msg.topic()})"))
        self.remaining -= 1
        if not self.remaining:
            self._finish()

    def fail(self, index: int, err: KafkaError, topic: str, size: int) -> None:
        """``produce()`` refused record ``index`` (``size``: its key and value bytes)."""
        message = f"{err.str()} (topic {topic})"
        if err.code() == _E.MSG_SIZE_TOO_LARGE:
            message = (f"{err.str()}: a record of {size} bytes exceeds max_request_size "
                       f"{self.sink.config.max_request_size} (topic {topic})")
        self.failures.append((index, _status_of(err), err.name(), message))
        self.release()

    def unroutable(self, index: int, why: _Unroutable) -> None:
        self.failures.append((index, why.status, why.code, why.message))
        self.release()

    def fail_rest(self, indices: range, code: str, message: str, routes: list | None) -> None:
        """Records ``indices`` will not be produced: ERRORED (those that failed routing already count)."""
        for index in indices:
            if routes is not None and routes[index] is None:
                continue
            self.failures.append((index, Status.ERRORED, code, message))
            self.release()

    def release(self) -> None:
        self.remaining -= 1
        if not self.remaining:
            self._finish()

    def _finish(self) -> None:
        done = self.done
        if done is None:  # never twice, whatever happened on the way
            return
        self.done = None
        self.sink._finished(self)
        failures = self.failures
        if not failures:
            done(Outcome(Status.DELIVERED))
            return
        status = Status.REJECTED if all(f[1] is Status.REJECTED for f in failures) else Status.ERRORED
        counts = Counter((code, message) for _, _, code, message in failures)
        reason = "; ".join(f"{code}: {message} ({count} event{'s' if count > 1 else ''})"
                           for (code, message), count in counts.most_common(5))
        if len(counts) > 5:
            reason += f"; and {len(counts) - 5} other errors"
        failed = sorted({f[0] for f in failures})
        if len(failed) == self.size:
            done(Outcome(status, reason=reason))
        else:
            done(Outcome(Status.DELIVERED, reason=reason, failed=failed, failed_status=status))


class _LibrdkafkaLog:
    """librdkafka's log lines (served by poll) into the component's structlog logger, rate limited."""

    def __init__(self, sink: KafkaSink) -> None:
        self._sink = sink

    def log(self, level: int, fmt: str, *args: Any) -> None:
        facility = args[0] if args else ""
        message = fmt % args if args else fmt
        if level >= 40:
            self._sink._rate_limited("warning", ("log", facility), "librdkafka", message=message)
        elif level >= 30:
            self._sink._rate_limited("info", ("log", facility), "librdkafka", message=message)
        else:
            self._sink._log.debug("librdkafka", message=message)


# --------------------------------------------------------------------------------------------- helpers


def _status_of(err: KafkaError) -> Status:
    return Status.REJECTED if err.code() in REJECTED_CODES else Status.ERRORED


def _describe(exc: BaseException) -> str:
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return f"{err.name()}: {err.str()}"
    return str(exc)


def _expand(template: str, values: dict[str, str]) -> str:
    return _TEMPLATE_VAR.sub(lambda m: values.get(m.group(1), ""), template)


def _database(payload: bytes) -> str:
    """``metadata.database`` of an envelope, or empty."""
    try:
        metadata = orjson.loads(payload).get("metadata")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    database = metadata.get("database") if isinstance(metadata, dict) else None
    return str(database) if database is not None else ""


def profile_codec(profile: Any) -> tuple[str, int | None]:
    """The Kafka codec and level the profile's ``compression`` block stands for (``none`` without a profile)."""
    if profile is None:
        return "none", None
    section = profile.compression

    def get(obj: Any, key: str, default: Any = None) -> Any:
        if isinstance(obj, dict):
            return obj.get(key, default)
        return getattr(obj, key, default)

    if not get(section, "enabled", True):
        return "none", None
    algorithm = get(section, "algorithm", "hybrid")
    if algorithm in ("lz4", "zstd"):
        return algorithm, get(get(section, algorithm, {}), "level", 3)
    if algorithm == "hybrid":
        options = get(section, "hybrid", {})
        return get(options, "large_algo", "zstd"), get(options, "large_level", 5)
    return "none", None


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's and librdkafka's ``murmur2`` partitioner), unsigned 32-bit."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length & ~3
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra == 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(KafkaSink)
