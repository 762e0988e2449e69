"""Setting up exactly-once from a validated profile: producer settings, topics, checkpoints.

The output section is the Kafka sink's (``output.*``): brokers, security, codec, ``linger_ms``,
``batch_size``, topics and the ``producer`` pass-through, applied as the sink applies them, plus
``transactional.id`` and ``transaction.timeout.ms`` (which the pass-through cannot override).
``message.max.bytes`` is the larger of ``output.max_request_size`` and the dead-letter topic's
``dlq.max_record_size`` (one producer writes both); output records are held to
``max_request_size`` and their topic's ``max.message.bytes`` by the pipeline itself.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from savegress_gw.components import Limiter
from savegress_gw.deadletter.holds import KeyHolds
from savegress_gw.deadletter.topic import TopicStoreError
from savegress_gw.exactly_once.checkpoints import WorkerCheckpoint, checkpoint_topic, read_checkpoints, \
    resume_marker, resume_point, transactional_id
from savegress_gw.exactly_once.loop import TransactionalPipeline
from savegress_gw.exactly_once.parking import TransactionalParking
from savegress_gw.exactly_once.producer import TransactionalProducer
from savegress_gw.kafka.client_errors import ClientErrors
from savegress_gw.kafka.codec import codec_settings
from savegress_gw.kafka.connection import BrokerWait, admin_settings, client_settings
from savegress_gw.kafka.errors import KafkaClientError
from savegress_gw.kafka.logs import LibrdkafkaLog, RateLimitedLog
from savegress_gw.kafka.routing import Router
from savegress_gw.kafka.topic_limits import TopicLimits
from savegress_gw.kafka.topics import TopicOptions, create_topic
from savegress_gw.metrics import ProcessMetrics
from savegress_gw.ring import Ring

_LABEL = "exactly-once"
READ_MARGIN_S = 30.0
"""Reading the checkpoint topic may wait for open transactions: up to twice the transaction timeout plus this."""


def connection(profile: Any, process: str) -> dict[str, Any]:
    """The connection settings (brokers, client id, SASL, TLS) of the Kafka output."""
    output = profile.output
    return client_settings(output.brokers, f"{profile.gateway.id}-{process}", output.sasl, output.tls)


def producer_settings(profile: Any, worker: int, max_dead_letter_size: int = 0) -> dict[str, Any]:
    """librdkafka settings of worker ``worker``'s transactional producer (``max_dead_letter_size``:
    the dead-letter topic's record limit, 0 without one)."""
    output, settings = profile.output, profile.exactly_once
    conf = {
        **connection(profile, f"worker-{worker}"),
        "linger.ms": output.linger_ms,
        "batch.size": output.batch_size,
        "message.max.bytes": max(output.max_request_size, max_dead_letter_size),
        "queue.buffering.max.messages": 1_000_000,
        "partitioner": "murmur2_random",
        "allow.auto.create.topics": output.topics.create,
        **codec_settings(output.compression, output.compression_level, profile),
        **output.producer,
    }
    conf.update({"transactional.id": transactional_id(profile.gateway.id, worker),
                 "transaction.timeout.ms": int(settings.transaction_timeout * 1000)})
    return conf


def wait_for_cluster(profile: Any, process: str, beat: Callable[[], None], log: Any) -> None:
    """With ``output.startup.wait``: return once a broker of the output answers, asking every
    second, logging ``waiting for kafka brokers`` every ``startup.log_interval`` and calling
    ``beat`` (the boot heartbeat) in between; without it, return at once. An authentication or TLS
    failure raises :class:`~savegress_gw.kafka.errors.KafkaClientError` (no waiting fixes it).

    Under exactly-once nothing can be read or sent before the checkpoint topic was read, so the
    source process and every worker wait here, before they report ready.
    """
    startup = profile.output.startup
    if not startup.wait:
        return
    limited = RateLimitedLog(log)
    errors = ClientErrors(limited, "kafka client failed fatally while waiting for the brokers")
    errors.opening = True
    probe = Producer({**connection(profile, f"{process}-probe"), "error_cb": errors, "logger": LibrdkafkaLog(limited)})
    waiting = BrokerWait(probe, profile.output.brokers, errors.open_errors, log, _LABEL, startup.log_interval)
    while waiting.attempt() is None:
        beat()
    if waiting.attempts > 1:
        log.info("kafka brokers reachable", attempts=waiting.attempts, waited_s=round(waiting.elapsed_s, 1))


def read_timeout(profile: Any) -> float:
    return 2 * profile.exactly_once.transaction_timeout + READ_MARGIN_S


def _isr(profile: Any) -> dict[str, str]:
    """Topic settings from ``replication.min_isr`` for the topics exactly-once creates."""
    min_isr = profile.replication.min_isr
    return {"min.insync.replicas": str(min_isr)} if min_isr else {}


def ensure_topics(profile: Any, admin: AdminClient, log: Any) -> None:
    """Create the checkpoint topic (compacted, one partition) and the output topic when allowed."""
    output = profile.output
    isr = _isr(profile)
    timeout = min(30.0, output.connect_timeout)
    options = TopicOptions(partitions=1, replication_factor=output.topics.replication_factor)
    topic = checkpoint_topic(profile.gateway.id)
    if create_topic(admin, topic, options, {"cleanup.policy": "compact", **isr}, timeout, _LABEL):
        log.info("created checkpoint topic", topic=topic)
    if output.topic_template is None and output.topics.create:
        create_topic(admin, output.topic, output.topics, isr, timeout, "kafka output")


def source_resume(profile: Any, per_lane: bool, log: Any) -> tuple[Any, dict[str, int]]:
    """For the source process: ``(position, {lane: ordinal})`` to restart from, per the checkpoint
    topic (see :func:`~savegress_gw.exactly_once.checkpoints.resume_marker`)."""
    checkpoints = read_checkpoints(admin_settings(connection(profile, "source")), checkpoint_topic(profile.gateway.id),
                                   read_timeout(profile), log)
    return resume_marker(checkpoints, profile.gateway.workers, profile.parallel.table_parallelism,
                        profile.source.type, per_lane)


def build_pipeline(profile: Any, worker: int, ring: Ring, metrics: ProcessMetrics, log: Any, beat: Callable[[], None],
                   limiter: Limiter | None = None, dlq: Any = None) -> TransactionalPipeline:
    """Worker ``worker``'s pipeline: topics exist, its producer fenced every predecessor, and its
    committed checkpoint is read. ``dlq`` (opened: its topic exists; a
    :class:`~savegress_gw.exactly_once.parking.TransactionalQueue` and a
    :class:`~savegress_gw.deadletter.holds.KeyedQueue`) takes the rejected events; with
    ``dlq.preserve_order`` the keys it holds are read once the predecessor's transaction is
    settled (``beat`` keeps the boot heartbeat while that waits for other workers' open
    transactions). Raises :class:`~savegress_gw.kafka.errors.KafkaClientError` or
    :class:`~savegress_gw.exactly_once.producer.ProducerFenced` naming what failed."""
    conf = producer_settings(profile, worker, dlq.max_record_size if dlq is not None else 0)
    admin = AdminClient(admin_settings(conf))
    ensure_topics(profile, admin, log)
    producer = TransactionalProducer(conf, profile.exactly_once.transaction_timeout, log)
    producer.start()
    topic = checkpoint_topic(profile.gateway.id)
    checkpoints = read_checkpoints(admin_settings(conf), topic, read_timeout(profile), log)
    workers, lanes, source = profile.gateway.workers, profile.parallel.table_parallelism, profile.source.type
    resume_point(checkpoints, workers, lanes, source, per_lane=False)  # refuses a checkpoint topic of another layout
    mine = checkpoints.get(worker) or WorkerCheckpoint(worker, workers, lanes, source)
    log.info("exactly-once producer ready", transactional_id=conf["transactional.id"], checkpoint_topic=topic,
             committed_ordinals=mine.ordinals, committed_position=mine.position)
    output = profile.output
    timeout = min(30.0, output.connect_timeout)

    def new_topic(name: str) -> None:
        if output.topics.create:
            try:
                create_topic(admin, name, output.topics, _isr(profile), timeout, "kafka output")
            except KafkaClientError as exc:
                log.warning(str(exc))

    router = Router(output.topic, output.topic_template, output.partitioner, output.partition_key, producer.client,
                    new_topic)
    limits = TopicLimits(admin, (output.max_request_size, "output.max_request_size"), output.batch_size, timeout, log)
    if output.topic_template is None:
        limits.limit(output.topic)
    dead_letter_limit = None
    if dlq is not None:
        dead_letter_limit = TopicLimits(admin, (dlq.max_record_size, "dlq.max_record_size"), output.batch_size,
                                        timeout, log).limit(dlq.topic)
    share = profile.buffer.size // (4 * profile.gateway.workers)
    holds = _held_keys(dlq, log, read_timeout(profile), beat) if dlq is not None and profile.dlq.preserve_order \
        else None
    parking = TransactionalParking(producer, dlq, dead_letter_limit, holds, f"{profile.gateway.id}/worker-{worker}",
                                   metrics, log)
    return TransactionalPipeline(ring, producer, router, mine, topic, profile.retry, metrics, log,
                                 profile.batching.max_wait, limits, parking, max(share, 1), limiter)


def _held_keys(dlq: Any, log: Any, timeout_s: float, beat: Callable[[], None]) -> KeyHolds:
    """``dlq.preserve_order``: hold every key the dead-letter topic has committed entries of.

    Reading waits for transactions open on the topic; another worker's predecessor may hold one
    open until that worker's new producer settles it (or the transaction timeout aborts it), so
    reads that time out are retried until ``timeout_s``.
    """
    holds = KeyHolds(dlq, log.bind(component="holds"), load=False)
    deadline = time.monotonic() + timeout_s
    while True:
        beat()
        try:
            holds.hold_existing(dlq.parked_keys())
            return holds
        except TopicStoreError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for open transactions on the dead-letter topic to read the held keys",
                        error=str(exc))
