"""The Kafka sink against a real broker: one 1-node Kafka 4.x (with a SASL/PLAIN listener) per module.

Needs Java 17+ and the jar cache or Maven (``python scripts/kafka_local.py fetch``). The sink is
built from profiles exactly as the gateway builds it; the tests call ``send``/``poll`` themselves
and read back with a plain confluent-kafka consumer.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

import savegress_gw_plugins.sinks.kafka as kafka_sink
from savegress_gw.components import Batch, Outcome, Status
from savegress_gw.envelope import encode, normalize
from savegress_gw.errors import ProfileError
from savegress_gw.kafka.partitioning import murmur2
from savegress_gw.testing import build, validated
from savegress_gw_plugins.compressors import hybrid, lz4, none, zstd
from tests.harness.kafka import kafka_local as kl

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
PLUGINS = (kafka_sink, hybrid, lz4, zstd, none)


@pytest.fixture(scope="module")
def cluster(kafka_cluster: Any) -> Any:
    """The session's 1-node cluster (with a SASL/PLAIN listener) from tests/conftest.py."""
    return kafka_cluster


# --------------------------------------------------------------------------------------------- helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def open_sink(cluster: Any, output: dict[str, Any] | None = None, **sections: Any) -> kafka_sink.KafkaSink:
    data = {"output": {"type": "kafka", "brokers": cluster.bootstrap_servers.split(","), **(output or {})},
            **sections}
    sink, _ = build("sink", data, *PLUGINS)
    assert isinstance(sink, kafka_sink.KafkaSink)
    return sink


def events(count: int, table: str = "users", schema: str = "public", start: int = 1, **extra: Any) -> list[dict]:
    return [normalize({"schema": schema, "table": table, "operation": "INSERT",
                       "after": {"id": i, "seq": i}, **extra}, "test") for i in range(start, start + count)]


def batch_of(evts: list[dict]) -> Batch:
    return encode(evts, time.time_ns())


def deliver(sink: kafka_sink.KafkaSink, batch: Batch, timeout: float = 60) -> Outcome:
    outcomes: list[Outcome] = []
    sink.send(batch, outcomes.append)
    deadline = time.monotonic() + timeout
    while not outcomes and time.monotonic() < deadline:
        sink.poll(0.05)
    assert len(outcomes) == 1, f"no outcome within {timeout}s"
    sink.poll(0)
    assert len(outcomes) == 1, "done() called more than once"
    return outcomes[0]


def consume(cluster: Any, topic: str, expected: int, timeout: float = 30) -> list[Any]:
    """Every record of ``topic`` from the beginning (assign, no group join), in partition order."""
    consumer = Consumer({**cluster.client_config(), "group.id": unique("reader"), "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                assert message.error() is None, message.error()
                records.append(message)
        # nothing more than expected
        records.extend(m for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
        return records
    finally:
        consumer.close()


def partition_count(cluster: Any, topic: str) -> int:
    return len(AdminClient(cluster.client_config()).list_topics(topic, timeout=10).topics[topic].partitions)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------- tests


def test_round_trip_of_every_envelope_field_key_and_headers(cluster: Any) -> None:
    topic = unique("round-trip")
    sink = open_sink(cluster, {"topic": topic})
    try:
        envelopes = [
            normalize({"id": "evt-1", "source": "postgres", "schema": "public", "table": "users",
                       "operation": "UPDATE", "timestamp": "2025-01-15T10:30:00.123456Z",
                       "transaction_id": "tx-12345", "position": {"lsn": "0/1234ABCD", "sequence": 42},
                       "before": {"id": 1, "name": "John Doe", "email": "john@example.com"},
                       "after": {"id": 1, "name": "John Doe", "email": "john.doe@example.com", "ü": "ñ"},
                       "metadata": {"connector_version": "1.0.0", "database": "production",
                                    "server": "db1.example.com", "primary_key": ["id"]}}, "test"),
            normalize({"id": "evt-2", "schema": "sales", "table": "orders", "operation": "DELETE",
                       "timestamp": "2025-01-15T10:30:01Z", "before": {"order_id": 7, "line": 2},
                       "after": None, "metadata": {"primary_key": ["order_id", "line"]}}, "test"),
            normalize({"table": "users", "operation": "INSERT", "after": {"id": 3}}, "http"),
        ]
        batch = batch_of(envelopes)
        assert deliver(sink, batch) == Outcome(Status.DELIVERED)
    finally:
        sink.close()
    records = consume(cluster, topic, len(envelopes))
    assert len(records) == len(envelopes)
    by_id = {orjson.loads(r.value())["id"]: r for r in records}
    for i, envelope in enumerate(envelopes):
        record = by_id[envelope["id"]]
        assert record.value() == batch.payloads[i], "the value is the payload exactly as encoded"
        assert orjson.loads(record.value()) == envelope
        assert record.key() == batch.keys[i].encode()
        assert dict(record.headers()) == {
            "savegress-event-id": envelope["id"].encode(),
            "savegress-operation": envelope["operation"].encode(),
            "savegress-table": envelope["table"].encode(),
            "savegress-timestamp": str(batch.timestamps_ms[i]).encode(),
        }
        assert len(record.headers()) == 4
    assert by_id["evt-1"].key() == b"users:1"
    assert by_id["evt-2"].key() == b"orders:7:2"
    assert by_id["evt-1"].headers()[3] == ("savegress-timestamp", b"1736937000123")


def test_topic_template_routes_each_table_to_its_own_topic_created_on_demand(cluster: Any) -> None:
    prefix = unique("tpl")
    sink = open_sink(cluster, {"topic_template": prefix + ".${schema}.${table}.${operation}",
                               "topics": {"partitions": 3}}, replication={"min_isr": 1})
    try:
        mixed = (events(5, "users") + events(4, "orders") + events(3, "orders", schema="sales")
                 + [normalize({"schema": "public", "table": "users", "operation": "DELETE",
                               "before": {"id": 1}}, "test")])
        assert deliver(sink, batch_of(mixed)) == Outcome(Status.DELIVERED)
        assert deliver(sink, batch_of(events(2, "users", start=100))) == Outcome(Status.DELIVERED)
    finally:
        sink.close()
    expected = {f"{prefix}.public.users.INSERT": 7, f"{prefix}.public.orders.INSERT": 4,
                f"{prefix}.sales.orders.INSERT": 3, f"{prefix}.public.users.DELETE": 1}
    admin = AdminClient(cluster.client_config())
    created = {name for name in admin.list_topics(timeout=10).topics if name.startswith(prefix)}
    assert created == set(expected)
    for topic, count in expected.items():
        records = consume(cluster, topic, count)
        schema, table, operation = topic.split(".")[1:]
        assert len(records) == count, topic
        assert {(e["schema"], e["table"], e["operation"]) for e in map(orjson.loads, (r.value() for r in records))} \
            == {(schema, table, operation)}
        assert partition_count(cluster, topic) == 3
        described = admin.describe_configs([ConfigResource("topic", topic)])
        config = next(iter(described.values())).result(timeout=10)
        assert config["min.insync.replicas"].value == "1"


def test_topic_template_with_database_reads_it_from_the_payload(cluster: Any) -> None:
    prefix = unique("db")
    sink = open_sink(cluster, {"topic_template": prefix + ".${database}.${table}"})
    try:
        mixed = events(2, metadata={"database": "production"}) + events(1, metadata={"database": "staging"}) \
            + events(1)
        assert deliver(sink, batch_of(mixed)) == Outcome(Status.DELIVERED)
    finally:
        sink.close()
    assert len(consume(cluster, f"{prefix}.production.users", 2)) == 2
    assert len(consume(cluster, f"{prefix}.staging.users", 1)) == 1
    assert len(consume(cluster, f"{prefix}..users", 1)) == 1  # no database: empty


def test_per_key_order_holds_across_six_partitions(cluster: Any) -> None:
    topic = unique("order")
    sink = open_sink(cluster, {"topic": topic, "topics": {"partitions": 6}, "linger_ms": 2})
    keys, rounds = 300, 40
    try:
        outcomes: list[Outcome] = []
        seq = 0
        for _ in range(rounds // 4):  # 10 batches of 4 rounds over every key, several in flight at once
            chunk = []
            for _ in range(4):
                for key in range(1, keys + 1):
                    seq += 1
                    chunk.append(normalize({"schema": "public", "table": "items", "operation": "UPDATE",
                                            "after": {"id": key, "seq": seq}}, "test"))
            sink.send(batch_of(chunk), outcomes.append)
            sink.poll(0)
        assert sink.flush(60)
        assert outcomes == [Outcome(Status.DELIVERED)] * (rounds // 4)
    finally:
        sink.close()
    assert partition_count(cluster, topic) == 6
    records = consume(cluster, topic, keys * rounds)
    assert len(records) == keys * rounds
    seqs: dict[bytes, list[int]] = defaultdict(list)
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for record in records:
        seqs[record.key()].append(orjson.loads(record.value())["after"]["seq"])
        partitions[record.key()].add(record.partition())
    assert len(seqs) == keys
    assert all(len(p) == 1 for p in partitions.values()), "a key spread over partitions"
    assert len(set().union(*partitions.values())) == 6, "keys should use every partition"
    for key, values in seqs.items():
        assert values == sorted(values) and len(values) == rounds, key


def test_compression_is_derived_from_the_profile_and_consumers_read_it(cluster: Any) -> None:
    cases = [
        ({}, {"compression": {"algorithm": "hybrid", "hybrid": {"large_algo": "zstd", "large_level": 7}}},
         "zstd", 7),
        ({}, {"compression": {"algorithm": "lz4", "lz4": {"level": 9}}}, "lz4", 9),
        ({}, {"compression": {"algorithm": "zstd", "zstd": {"level": 19}}}, "zstd", 12),  # librdkafka's cap
        ({}, {"compression": {"algorithm": "zstd", "enabled": False}}, "none", None),
        ({}, {"compression": {"algorithm": "none"}}, "none", None),
        ({}, {}, "zstd", 5),  # the default block: hybrid, large_algo zstd at level 5
        ({"compression": "snappy"}, {"compression": {"algorithm": "lz4"}}, "snappy", None),
        ({"compression": "gzip", "compression_level": 6}, {"compression": {"algorithm": "lz4"}}, "gzip", 6),
    ]
    for output, sections, codec, level in cases:
        topic = unique(f"codec-{codec}")
        sink = open_sink(cluster, {"topic": topic, **output}, **sections)
        try:
            assert sink.producer_config["compression.type"] == codec, (output, sections)
            assert sink.producer_config.get("compression.level") == level, (output, sections)
            assert deliver(sink, batch_of(events(50))) == Outcome(Status.DELIVERED)
        finally:
            sink.close()
        values = sorted(orjson.loads(r.value())["after"]["seq"] for r in consume(cluster, topic, 50))
        assert values == list(range(1, 51)), codec


def test_acks_follow_output_then_replication_then_all(cluster: Any) -> None:
    cases = [
        ({}, {}, "all", True),
        ({}, {"replication": {"ack_mode": "leader"}}, "1", False),
        ({}, {"replication": {"ack_mode": "none"}}, "0", False),
        ({"acks": "all"}, {"replication": {"ack_mode": "leader"}}, "all", True),
        ({"acks": "leader"}, {}, "1", False),
    ]
    for output, sections, acks, idempotent in cases:
        topic = unique("acks")
        sink = open_sink(cluster, {"topic": topic, **output}, **sections)
        try:
            assert sink.producer_config["acks"] == acks
            assert sink.producer_config["enable.idempotence"] is idempotent
            assert deliver(sink, batch_of(events(10))) == Outcome(Status.DELIVERED)
        finally:
            sink.close()
        received = len(consume(cluster, topic, 10, timeout=3 if acks == "0" else 30))
        # acks=0 is fire-and-forget: a record sent before a fresh partition's leader is ready is lost silently
        assert received == 10 if acks != "0" else received <= 10


def test_a_record_over_max_request_size_is_rejected_and_the_rest_delivered(cluster: Any) -> None:
    topic = unique("too-large")
    sink = open_sink(cluster, {"topic": topic, "max_request_size": 20_000})
    try:
        evts = events(5)
        evts.insert(2, normalize({"table": "users", "operation": "INSERT",
                                  "after": {"id": 99, "seq": 99, "blob": "x" * 30_000}}, "test"))
        outcome = deliver(sink, batch_of(evts))
    finally:
        sink.close()
    assert outcome.status is Status.DELIVERED
    assert outcome.failed == [2] and outcome.failed_status is Status.REJECTED
    assert "MSG_SIZE_TOO_LARGE" in outcome.reason and "max_request_size 20000" in outcome.reason
    seqs = sorted(orjson.loads(r.value())["after"]["seq"] for r in consume(cluster, topic, 5))
    assert seqs == [1, 2, 3, 4, 5]


def test_partition_key_hash_and_manual_partitioners(cluster: Any) -> None:
    hashed, manual, spread = unique("pk-hash"), unique("pk-manual"), unique("pk-rr")
    mixed = events(20, "users") + events(20, "orders") + events(20, "accounts")
    for topic, output in ((hashed, {"partition_key": "${table}"}),
                          (manual, {"partitioner": "manual", "partition_key": "4"}),
                          (spread, {"partitioner": "round-robin"})):
        sink = open_sink(cluster, {"topic": topic, "topics": {"partitions": 6}, **output})
        try:
            assert deliver(sink, batch_of(mixed)) == Outcome(Status.DELIVERED)
        finally:
            sink.close()
    # hash: every table in one partition, the one Kafka's murmur2 (Java client, librdkafka) gives
    reference = Producer({**cluster.client_config(), "partitioner": "murmur2"})
    for record in consume(cluster, hashed, 60):
        table = orjson.loads(record.value())["table"]
        assert record.partition() == (murmur2(table.encode()) & 0x7FFFFFFF) % 6
    got: list[int] = []
    reference.produce(hashed, b"probe", b"users", on_delivery=lambda err, msg: got.append(msg.partition()))
    reference.flush(10)
    assert got == [(murmur2(b"users") & 0x7FFFFFFF) % 6]
    assert {r.partition() for r in consume(cluster, manual, 60)} == {4}
    per_partition = defaultdict(int)
    for record in consume(cluster, spread, 60):
        per_partition[record.partition()] += 1
    assert dict(per_partition) == {p: 10 for p in range(6)}

    sink = open_sink(cluster, {"topic": unique("pk-bad"), "partitioner": "manual", "partition_key": "9",
                               "topics": {"partitions": 2}})
    try:
        outcome = deliver(sink, batch_of(events(3)))
    finally:
        sink.close()
    assert outcome.status is Status.REJECTED and outcome.failed == []
    assert "partition 9 does not exist" in outcome.reason or "_UNKNOWN_PARTITION" in outcome.reason


def test_missing_topic_without_create_fails_at_open_naming_it(cluster: Any) -> None:
    topic = unique("absent")
    with pytest.raises(kafka_sink.KafkaSinkError, match=f"topic '{topic}' does not exist"):
        open_sink(cluster, {"topic": topic, "topics": {"create": False}})
    assert topic not in AdminClient(cluster.client_config()).list_topics(timeout=10).topics
    existing = unique("present")
    admin = AdminClient(cluster.client_config())
    admin.create_topics([NewTopic(existing, 1, 1)])[existing].result(timeout=30)
    sink = open_sink(cluster, {"topic": existing, "topics": {"create": False}})
    try:
        assert deliver(sink, batch_of(events(3))) == Outcome(Status.DELIVERED)
    finally:
        sink.close()


def test_unreachable_brokers_fail_at_open_within_connect_timeout(cluster: Any) -> None:
    brokers = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    data = {"output": {"type": "kafka", "brokers": brokers, "connect_timeout": "3s"}}
    started = time.monotonic()
    with pytest.raises(kafka_sink.KafkaSinkError) as caught:
        build("sink", data, *PLUGINS)
    elapsed = time.monotonic() - started
    print(f"unreachable brokers reported after {elapsed:.2f}s: {caught.value}")
    assert 2.5 <= elapsed < 5.0
    message = str(caught.value)
    assert ",".join(brokers) in message and "connect_timeout 3s" in message


def test_sasl_plain_right_password_delivers_wrong_password_fails_at_open(cluster: Any) -> None:
    servers = cluster.sasl_bootstrap_servers.split(",")
    topic = unique("sasl")
    good = {"type": "kafka", "brokers": servers, "topic": topic,
            "sasl": {"mechanism": "PLAIN", "username": kl.SASL_USERNAME, "password": kl.SASL_PASSWORD}}
    sink, _ = build("sink", {"output": good}, *PLUGINS)
    try:
        assert sink.producer_config["security.protocol"] == "SASL_PLAINTEXT"
        assert sink.producer_config["sasl.password"] == "***"
        assert deliver(sink, batch_of(events(5))) == Outcome(Status.DELIVERED)
    finally:
        sink.close()
    assert len(consume(cluster, topic, 5)) == 5

    bad = {**good, "sasl": {**good["sasl"], "password": "wrong-password"}}
    started = time.monotonic()
    with pytest.raises(kafka_sink.KafkaSinkError, match="authentication failed") as caught:
        build("sink", {"output": bad}, *PLUGINS)  # connect_timeout stays at its default 30s
    elapsed = time.monotonic() - started
    print(f"wrong password reported after {elapsed:.2f}s: {caught.value}")
    assert elapsed < 10
    assert "_AUTHENTICATION" in str(caught.value) and "wrong-password" not in str(caught.value)


def test_profile_validation_of_the_kafka_output() -> None:
    def problems(output: dict[str, Any]) -> str:
        with pytest.raises(ProfileError) as caught:
            validated({"output": {"type": "kafka", **output}}, *PLUGINS)
        return str(caught.value)

    assert "brokers" in problems({})
    assert "host:port" in problems({"brokers": ["kafka1"]})
    assert "${tabel}" in problems({"brokers": ["k:9092"], "topic_template": "cdc.${tabel}"})
    assert "manual needs partition_key" in problems({"brokers": ["k:9092"], "partitioner": "manual"})
    assert "username and password" in problems({"brokers": ["k:9092"], "sasl": {"mechanism": "PLAIN"}})
    assert "error_cb" in problems({"brokers": ["k:9092"], "producer": {"error_cb": "x"}})
    assert "compression_level" in problems({"brokers": ["k:9092"], "compression_level": 22})
    profile = validated({"output": {"type": "kafka", "brokers": "a:1, b:2", "batch_size": "64KB"}}, *PLUGINS)
    assert profile.output.brokers == ["a:1", "b:2"] and profile.output.batch_size == 64 * 1024
