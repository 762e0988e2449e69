"""The exactly-once building blocks against a real broker: fencing, checkpoints read back, aborts,
parking in a transaction."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import structlog
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from savegress_gw.components import Batch
from savegress_gw.deadletter.topic import TopicStore
from savegress_gw.envelope import encode, normalize
from savegress_gw.exactly_once.checkpoints import WorkerCheckpoint, checkpoint_key, read_checkpoints
from savegress_gw.exactly_once.parking import TransactionalParking
from savegress_gw.exactly_once.producer import ProducerFenced, TransactionAborted, TransactionalProducer
from savegress_gw.kafka.topics import TopicOptions, create_topic
from savegress_gw.metrics import MetricsBlock
from savegress_gw.testing import build
from savegress_gw_plugins.dlq import kafka as kafka_dlq
from savegress_gw_plugins.sinks import kafka as kafka_sink
from savegress_gw_plugins.sources import generator
from tests.harness.transactions import read_committed

pytestmark = [pytest.mark.kafka]
LOG = structlog.get_logger()


def producer(cluster: Any, transactional_id: str) -> TransactionalProducer:
    conf = {**cluster.client_config(), "transactional.id": transactional_id, "transaction.timeout.ms": 10_000}
    made = TransactionalProducer(conf, 10.0, LOG)
    made.start()
    return made


def topic_of(cluster: Any, name: str, compact: bool = False) -> str:
    settings = {"cleanup.policy": "compact"} if compact else {}
    create_topic(AdminClient(cluster.client_config()), name, TopicOptions(partitions=1), settings, 30, "test")
    return name


def record(seq: int) -> bytes:
    return b'{"after": {"seq": %d}}' % seq


def test_a_replaced_producer_is_fenced_and_its_open_transaction_never_becomes_visible(kafka_cluster: Any) -> None:
    topic = topic_of(kafka_cluster, f"eos-fence-{uuid.uuid4().hex[:8]}")
    tid = f"fence-{uuid.uuid4().hex[:8]}"
    zombie = producer(kafka_cluster, tid)
    zombie.begin()
    zombie.produce(topic, record(1), b"k", None)
    zombie.poll(1.0)
    successor = producer(kafka_cluster, tid)  # init_transactions fences the zombie and aborts its transaction
    successor.begin()
    successor.produce(topic, record(2), b"k", None)
    successor.commit()
    with pytest.raises(ProducerFenced):
        zombie.commit()
    assert read_committed(kafka_cluster.client_config(), topic).sequences == [2]


def test_an_aborted_transaction_is_invisible_and_the_producer_goes_on(kafka_cluster: Any) -> None:
    topic = topic_of(kafka_cluster, f"eos-abort-{uuid.uuid4().hex[:8]}")
    writer = producer(kafka_cluster, f"abort-{uuid.uuid4().hex[:8]}")
    writer.begin()
    writer.produce(topic, record(1), b"k", None)
    with pytest.raises(TransactionAborted, match="on purpose"):
        writer.abort("on purpose")
    writer.begin()
    writer.produce(topic, record(2), b"k", None)
    writer.commit()
    assert read_committed(kafka_cluster.client_config(), topic).sequences == [2]


def test_checkpoints_read_back_are_the_latest_committed_per_worker(kafka_cluster: Any) -> None:
    topic = topic_of(kafka_cluster, f"eos-ckpt-{uuid.uuid4().hex[:8]}", compact=True)
    assert read_checkpoints(kafka_cluster.client_config(), f"missing-{uuid.uuid4().hex[:6]}", 30, LOG) == {}
    writer = producer(kafka_cluster, f"ckpt-{uuid.uuid4().hex[:8]}")
    for worker, ordinal in ((0, 10), (1, 20), (0, 30)):
        writer.begin()
        checkpoint = WorkerCheckpoint(worker, 2, 8, "generator", {"": ordinal}, {"": ordinal}, ordinal)
        writer.produce(topic, checkpoint.encode(), checkpoint_key(worker), None, partition=0)
        writer.commit()
    writer.begin()
    aborted = WorkerCheckpoint(1, 2, 8, "generator", {"": 99}, {"": 99}, 99)
    writer.produce(topic, aborted.encode(), checkpoint_key(1), None, partition=0)
    with pytest.raises(TransactionAborted):
        writer.abort("never committed")
    found = read_checkpoints(kafka_cluster.client_config(), topic, 30, LOG)
    assert {worker: c.ordinals[""] for worker, c in found.items()} == {0: 30, 1: 20}


def test_a_parked_event_is_visible_with_its_committed_transaction_only_and_counted_once(kafka_cluster: Any) -> None:
    """The dead-letter record goes into the open transaction: an aborted attempt leaves nothing
    visible and counts nothing; the replayed, committed one parks the event once, with the reason.
    An event whose dead-letter record is too large for the dead-letter topic is dropped and counted so."""
    topic = f"eos-park-{uuid.uuid4().hex[:8]}"
    profile = {"source": {"type": "generator"}, "exactly_once": {"enabled": True},
               "output": {"type": "kafka", "brokers": kafka_cluster.bootstrap_servers.split(","), "topic": topic},
               "dlq": {"enabled": True, "type": "kafka", "timeout": "10s"}}
    queue, _ = build("dlq", profile, generator, kafka_sink, kafka_dlq)
    metrics = MetricsBlock(1)
    writer = producer(kafka_cluster, f"park-{uuid.uuid4().hex[:8]}")
    parking = TransactionalParking(writer, queue, (5000, "dlq.max_record_size"), None, "gw/worker-0",
                                   metrics.row(0), LOG)
    batch = encode([normalize({"id": f"e{seq}", "table": "users", "operation": "INSERT",
                               "after": {"id": seq, "seq": seq, "blob": "b" * (6000 if seq == 3 else 10)}}, "test")
                    for seq in (1, 2, 3)], time.time_ns())
    reason = "MSG_SIZE_TOO_LARGE: a record of 30100 bytes exceeds output.max_request_size 20000"
    writer.begin()
    parking.begin()
    parking.reject(batch, {1: reason, 2: reason})
    with pytest.raises(TransactionAborted):
        writer.abort("on purpose")
    totals = metrics.counter_totals()
    assert (totals["events_dead_lettered"], totals["events_dropped_rejected"]) == (0, 0)
    writer.begin()
    parking.begin()
    parking.reject(batch, {1: reason, 2: reason})
    writer.commit()
    parking.committed()
    queue.close()
    totals = metrics.counter_totals()
    assert (totals["events_dead_lettered"], totals["events_dropped_rejected"]) == (1, 1)
    assert read_committed(kafka_cluster.client_config(), f"{topic}.dlq").sequences == [2]
    (entry,) = TopicStore(f"{topic}.dlq", kafka_cluster.client_config()).entries()
    assert (entry.event_id, entry.reason, entry.error_class, entry.origin) == \
        ("e2", reason, "MSG_SIZE_TOO_LARGE", "gw/worker-0")


def two_dead_letters(kafka_cluster: Any, topic: str) -> tuple[Any, Batch, list[list[tuple[str, str]]]]:
    """An opened Kafka dead-letter queue for output ``topic`` (one partition), two events (ids e1,
    e2) and their dead-letter records' headers."""
    profile = {"source": {"type": "generator"}, "exactly_once": {"enabled": True},
               "output": {"type": "kafka", "brokers": kafka_cluster.bootstrap_servers.split(","), "topic": topic,
                          "topics": {"partitions": 1}},
               "dlq": {"enabled": True, "type": "kafka", "timeout": "20s"}}
    queue, _ = build("dlq", profile, generator, kafka_sink, kafka_dlq)
    events = encode([normalize({"id": f"e{n}", "table": "users", "operation": "INSERT", "after": {"id": n}}, "test")
                     for n in (1, 2)], time.time_ns())
    headers = queue.record_headers(events, ["too large"] * 2, 1, "gw/worker-0")
    return queue, events, headers


def test_reading_the_dead_letter_topic_waits_for_open_transactions_and_misses_no_committed_entry(
        kafka_cluster: Any) -> None:
    """A committed park behind another worker's open transaction (the last stable offset stops
    there) is still read: the store waits until that transaction is decided."""
    queue, events, headers = two_dead_letters(kafka_cluster, f"eos-lso-{uuid.uuid4().hex[:8]}")
    slow, quick = (producer(kafka_cluster, f"lso-{name}-{uuid.uuid4().hex[:6]}") for name in ("slow", "quick"))
    slow.begin()
    slow.produce(queue.topic, events.payloads[0], events.keys[0], headers[0])
    slow.client.flush(10)  # on the broker, undecided: the last stable offset stops before it
    quick.begin()
    quick.produce(queue.topic, events.payloads[1], events.keys[1], headers[1])
    quick.commit()
    found: list[dict[str, str]] = []
    reader = threading.Thread(target=lambda: found.append(queue.parked_keys()))
    reader.start()
    reader.join(2)
    assert reader.is_alive() and not found, "the read returned while a transaction before a committed entry was open"
    slow.commit()
    reader.join(30)
    queue.close()
    assert found == [{events.keys[0]: "e1", events.keys[1]: "e2"}]


def test_removing_transactionally_parked_entries_cuts_past_the_commit_markers_between_them(
        kafka_cluster: Any) -> None:
    """Each transaction leaves a commit marker in the partition: entries at offsets 0 and 2 of
    ``[entry, marker, entry, marker]``. Removing both entries moves the low-water mark past all
    four records, and the store counts no entry."""
    queue, events, headers = two_dead_letters(kafka_cluster, f"eos-cut-{uuid.uuid4().hex[:8]}")
    writer = producer(kafka_cluster, f"cut-{uuid.uuid4().hex[:6]}")
    for i in (0, 1):
        writer.begin()
        writer.produce(queue.topic, events.payloads[i], events.keys[i], headers[i])
        writer.commit()
    queue.close()
    store = TopicStore(queue.topic, kafka_cluster.client_config())
    assert [entry.id for entry in store.entries()] == ["p0:0", "p0:2"]
    assert store.remove(["p0:0", "p0:2"]) == 2
    consumer = Consumer({**kafka_cluster.client_config(), "group.id": f"cut-{uuid.uuid4().hex[:6]}"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(queue.topic, 0), timeout=10, cached=False)
    finally:
        consumer.close()
    assert (low, high) == (4, 4) and store.count() == 0
