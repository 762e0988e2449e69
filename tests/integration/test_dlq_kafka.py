"""The Kafka dead-letter queue against a real broker (one 1-node Kafka 4.x for the module).

``put`` is called directly on queues built from profiles, and once through a whole gateway (HTTP
source → Kafka sink → dead-letter topic). Records are read back with a plain confluent-kafka
consumer.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from savegress_gw.components import Batch
from savegress_gw.envelope import encode, normalize
from savegress_gw.testing import build
from savegress_gw_plugins.compressors import hybrid, lz4, none, zstd
from savegress_gw_plugins.dlq import kafka as kafka_dlq
from savegress_gw_plugins.sinks import kafka as kafka_sink
from savegress_gw_plugins.sinks import stdout
from tests.harness.gateway import Gateway, free_port

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
PLUGINS = (kafka_dlq, kafka_sink, stdout, hybrid, lz4, zstd, none)
DLQ_HEADERS = ("savegress-dlq-reason", "savegress-dlq-error-class", "savegress-dlq-attempts",
               "savegress-dlq-first-failure", "savegress-dlq-last-failure", "savegress-dlq-origin",
               "savegress-dlq-original-topic")





@pytest.fixture(scope="module")
def cluster(kafka_cluster: Any) -> Any:
    """The session's 1-node cluster from tests/conftest.py."""
    return kafka_cluster


# --------------------------------------------------------------------------------------------- helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def brokers(cluster: Any) -> list[str]:
    return cluster.bootstrap_servers.split(",")


def batch_of(events: list[dict[str, Any]]) -> Batch:
    return encode([normalize(event, "test") for event in events], time.time_ns())


def consume(cluster: Any, topic: str, expected: int, timeout: float = 30) -> list[Any]:
    """Every record of ``topic`` from the beginning (and nothing more than ``expected`` arrives)."""
    consumer = Consumer({**cluster.client_config(), "group.id": unique("reader"), "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(m for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
        records.extend(m for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
        return records
    finally:
        consumer.close()


def topic_config(cluster: Any, topic: str) -> dict[str, str]:
    admin = AdminClient(cluster.client_config())
    resource = ConfigResource("topic", topic)
    return {name: entry.value for name, entry in admin.describe_configs([resource])[resource].result(10).items()}


def headers(record: Any) -> dict[str, str]:
    found = [(name, value.decode()) for name, value in record.headers()]
    assert len(found) == len(dict(found)), "no header twice"
    return dict(found)


def iso_ms(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


# --------------------------------------------------------------------------------------------- tests


def test_put_round_trip_key_value_and_every_header(cluster: Any) -> None:
    topic = unique("orders")
    data = {"gateway": {"id": "gw-a"}, "output": {"type": "kafka", "brokers": brokers(cluster), "topic": topic},
            "dlq": {"enabled": True}}
    queue, _ = build("dlq", data, *PLUGINS)
    events = [{"id": f"evt-{i}", "schema": "sales", "table": "orders", "operation": "UPDATE",
               "after": {"id": i, "blob": "x" * (2_000_000 if i == 1 else 10)}} for i in range(3)]
    batch = batch_of(events)
    reason = "MSG_SIZE_TOO_LARGE: Broker: Message size too large (topic orders) (3 events)"
    before = time.time()
    try:
        queue.put(batch, reason, 4, "gw-a/worker-1")
    finally:
        queue.close()
    after = time.time()

    records = sorted(consume(cluster, f"{topic}.dlq", 3), key=lambda r: orjson.loads(r.value())["id"])
    assert len(records) == 3
    assert len(records[1].value()) > 2_000_000, "larger than the broker's default message.max.bytes (1MB)"
    for i, record in enumerate(records):
        assert record.key() == batch.keys[i].encode() == f"orders:{i}".encode()
        assert record.value() == batch.payloads[i]
        found = headers(record)
        assert found == {
            "savegress-event-id": f"evt-{i}", "savegress-operation": "UPDATE", "savegress-table": "orders",
            "savegress-timestamp": str(batch.timestamps_ms[i]),
            "savegress-dlq-reason": reason, "savegress-dlq-error-class": "MSG_SIZE_TOO_LARGE",
            "savegress-dlq-attempts": "4", "savegress-dlq-first-failure": found["savegress-dlq-first-failure"],
            "savegress-dlq-last-failure": found["savegress-dlq-first-failure"],
            "savegress-dlq-origin": "gw-a/worker-1", "savegress-dlq-original-topic": topic,
        }
        assert found["savegress-dlq-first-failure"].endswith("Z")
        assert before - 1 <= iso_ms(found["savegress-dlq-first-failure"]) <= after + 1
    config = topic_config(cluster, f"{topic}.dlq")
    assert config["max.message.bytes"] == str(16 * 1024 * 1024)
    assert len(AdminClient(cluster.client_config()).list_topics(timeout=10).topics[f"{topic}.dlq"].partitions) == 6


def test_a_templated_output_records_the_topic_each_event_was_routed_to(cluster: Any) -> None:
    prefix, parked = unique("tpl"), unique("parked")
    data = {"output": {"type": "kafka", "brokers": brokers(cluster), "topic_template": prefix + ".${schema}.${table}",
                       "topics": {"partitions": 2}},
            "dlq": {"topic": parked, "max_record_size": "2MB"}, "replication": {"min_isr": 1}}
    queue, _ = build("dlq", data, *PLUGINS)
    events = [{"schema": "public", "table": "users", "operation": "INSERT", "after": {"id": 1}},
              {"schema": "sales", "table": "orders", "operation": "DELETE", "before": {"id": 2}},
              {"schema": "public", "table": "user events", "operation": "INSERT", "after": {"id": 3}}]
    try:
        queue.put(batch_of(events), "webhook delivery failed: 400 Bad Request", 1, "o")
    finally:
        queue.close()
    routed = {orjson.loads(r.value())["table"]: headers(r)["savegress-dlq-original-topic"]
              for r in consume(cluster, parked, 3)}
    assert routed == {"users": f"{prefix}.public.users", "orders": f"{prefix}.sales.orders",
                      "user events": f"{prefix}.public.user_events"}
    config = topic_config(cluster, parked)
    assert (config["max.message.bytes"], config["min.insync.replicas"]) == (str(2 * 1024 * 1024), "1")


def test_another_output_with_its_own_brokers_and_a_failing_put_raises(cluster: Any) -> None:
    parked = unique("own")
    data = {"output": {"type": "stdout"},
            "dlq": {"type": "kafka", "brokers": ",".join(brokers(cluster)), "topic": parked,
                    "max_record_size": 50_000, "timeout": "10s"}}
    queue, _ = build("dlq", data, *PLUGINS)
    try:
        assert queue._conf["acks"] == "all" and queue._conf["enable.idempotence"] is True
        assert queue._conf["message.max.bytes"] == 50_000 and queue._conf["message.timeout.ms"] == 10_000
        queue.put(batch_of([{"table": "t", "operation": "INSERT", "after": {"id": 1}}]), "HTTP 503: busy", 6, "o")
        too_large = batch_of([{"table": "t", "operation": "INSERT", "after": {"id": 2}},
                              {"table": "t", "operation": "INSERT", "after": {"id": 3, "blob": "y" * 60_000}}])
        with pytest.raises(kafka_dlq.KafkaDlqError) as caught:
            queue.put(too_large, "boom", 1, "o")
    finally:
        queue.close()
    message = str(caught.value)
    assert f"kafka dlq: 1 of 2 records to topic '{parked}' failed: MSG_SIZE_TOO_LARGE" in message
    assert "exceeds max_record_size 50000" in message
    records = sorted(consume(cluster, parked, 2), key=lambda r: orjson.loads(r.value())["after"]["id"])
    first = headers(records[0])
    assert first["savegress-dlq-original-topic"] == "" and first["savegress-dlq-error-class"] == "HTTP 503"
    assert first["savegress-dlq-attempts"] == "6"
    assert sorted(orjson.loads(r.value())["after"]["id"] for r in records) == [1, 2]


def samples(gateway: Gateway, name: str) -> float:
    text = requests.get(gateway.url("/metrics"), timeout=5).text
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$")
    return sum(float(m.group(1)) for line in text.splitlines() if (m := pattern.match(line)))


@pytest.mark.slow
def test_gateway_parks_an_oversize_event_in_the_dead_letter_topic_and_streams_on(cluster: Any,
                                                                                 tmp_path: Path) -> None:
    port, topic = free_port(), unique("gw")
    gateway = Gateway(tmp_path, {
        "source": {"type": "http", "listen": f"127.0.0.1:{port}"},
        "output": {"type": "kafka", "brokers": brokers(cluster), "topic": topic, "max_request_size": 20000,
                   "topics": {"partitions": 3}},
        "dlq": {"enabled": True},
    }).start()
    url = f"http://127.0.0.1:{port}/v1/events"

    def post(events: list[dict[str, Any]]) -> requests.Response:
        return requests.post(url, data="\n".join(json.dumps(e) for e in events),
                             headers={"Content-Type": "application/x-ndjson"}, timeout=60)

    try:
        gateway.wait_ready(90)
        events = [{"table": "users", "operation": "INSERT", "after": {"id": i}} for i in range(50)]
        events.insert(25, {"table": "users", "operation": "INSERT", "after": {"id": 1000, "blob": "z" * 60_000}})
        response = post(events)
        assert response.status_code == 202 and response.json() == {"accepted": 51}, response.text

        delivered = consume(cluster, topic, 50)
        assert sorted(orjson.loads(r.value())["after"]["id"] for r in delivered) == list(range(50))
        (parked,) = consume(cluster, f"{topic}.dlq", 1)
        value = orjson.loads(parked.value())
        assert value["after"]["id"] == 1000 and len(parked.value()) > 60_000
        assert parked.key() == b"users:1000"
        found = headers(parked)
        assert "MSG_SIZE_TOO_LARGE" in found["savegress-dlq-reason"]
        assert "max_request_size 20000" in found["savegress-dlq-reason"]
        assert found["savegress-dlq-error-class"] == "MSG_SIZE_TOO_LARGE"
        assert found["savegress-dlq-origin"] == "savegress-gw/worker-0"
        assert found["savegress-dlq-original-topic"] == topic
        assert found["savegress-event-id"] == value["id"]
        assert samples(gateway, "savegress_events_dead_lettered_total") == 1

        response = post([{"table": "users", "operation": "INSERT", "after": {"id": i}} for i in range(50, 60)])
        assert response.status_code == 202 and response.json() == {"accepted": 10}, response.text
        delivered = consume(cluster, topic, 60)
        assert sorted(orjson.loads(r.value())["after"]["id"] for r in delivered) == list(range(60))
        assert samples(gateway, "savegress_events_processed_total") == 60
    finally:
        assert gateway.stop() == 0, gateway.stderr()[-3000:]
