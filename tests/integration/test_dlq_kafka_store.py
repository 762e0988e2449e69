"""The Kafka dead-letter topic read back and removed from (``dlq list | show | replay | purge``), on a real broker.

The store is checked directly on records ``put`` by the queue plugin; then the commands run as
a user runs them, against a whole gateway whose Kafka output refuses records over
``max_request_size`` (a real producer error) and with ``dlq.preserve_order`` on; the replay
raises the limit, the events arrive in order, and the running gateway releases the key.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from confluent_kafka import Consumer, TopicPartition

from savegress_gw.components import Batch
from savegress_gw.deadletter.topic import TopicStore
from savegress_gw.envelope import encode, normalize
from savegress_gw.testing import build
from savegress_gw_plugins.compressors import hybrid, lz4, none, zstd
from savegress_gw_plugins.dlq import kafka as kafka_dlq
from savegress_gw_plugins.sinks import kafka as kafka_sink
from savegress_gw_plugins.sinks import stdout
from tests.harness.flaky_http import dlq_cli
from tests.harness.gateway import Gateway, free_port, wait_for

pytestmark = pytest.mark.kafka

PLUGINS = (kafka_dlq, kafka_sink, stdout, hybrid, lz4, zstd, none)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def brokers(cluster: Any) -> list[str]:
    return cluster.bootstrap_servers.split(",")


def watermarks(cluster: Any, topic: str, partition: int = 0) -> tuple[int, int]:
    consumer = Consumer({**cluster.client_config(), "group.id": unique("wm")})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        consumer.close()


def records(cluster: Any, topic: str) -> list[Any]:
    """Every record of ``topic`` (all partitions) between its low- and high-water marks right now."""
    consumer = Consumer({**cluster.client_config(), "group.id": unique("reader"), "enable.auto.commit": False,
                         "enable.partition.eof": True})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                 for p in partitions}
        todo = {p for p, (low, high) in marks.items() if high > low}
        consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in todo])
        found: list[Any] = []
        deadline = time.monotonic() + 30
        while todo and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    found.append(message)
                    if message.offset() >= marks[message.partition()][1] - 1:
                        todo.discard(message.partition())
        assert not todo, f"{topic}: partitions {todo} not read up to their high-water mark"
        return found
    finally:
        consumer.close()


def batch_of(events: list[dict[str, Any]]) -> Batch:
    return encode([normalize(event, "test") for event in events], time.time_ns())


def dead_letter_queue(cluster: Any, gateway: str, topic: str, partitions: int) -> tuple[Any, Any]:
    """The Kafka dead-letter queue of a Kafka output to ``topic`` (built, open) and its context."""
    data = {"gateway": {"id": gateway},
            "output": {"type": "kafka", "brokers": brokers(cluster), "topic": topic,
                       "topics": {"partitions": partitions}},
            "dlq": {"enabled": True, "timeout": "10s"}}
    return build("dlq", data, *PLUGINS)


def order_updates(numbers: range, keys: int) -> list[dict[str, Any]]:
    """UPDATE events ``evt-<n>`` of table sales.orders, with ``keys`` primary keys in turn."""
    return [{"id": f"evt-{i}", "schema": "sales", "table": "orders", "operation": "UPDATE",
             "after": {"id": i % keys}} for i in numbers]


def test_entries_are_read_with_their_headers_and_removed_with_markers_and_delete_records(kafka_cluster: Any) -> None:
    topic = unique("orders")
    queue, context = dead_letter_queue(kafka_cluster, "gw-s", topic, partitions=1)
    events = order_updates(range(6), keys=3)
    reason = "MSG_SIZE_TOO_LARGE: Broker: Message size too large"
    try:
        queue.put(batch_of(events), reason, 4, "gw-s/worker-1")
        assert queue.parked_keys() == {"orders:0": "evt-0", "orders:1": "evt-1", "orders:2": "evt-2"}
    finally:
        queue.close()
    store = queue.store(context.profile)
    assert isinstance(store, TopicStore) and store.topic == f"{topic}.dlq"

    entries = list(store.entries())
    assert [e.id for e in entries] == [f"p0:{n}" for n in range(6)]
    assert [e.event_id for e in entries] == [f"evt-{n}" for n in range(6)]
    first = entries[0]
    assert (first.key, first.table, first.schema, first.operation) == ("orders:0", "orders", "sales", "UPDATE")
    assert (first.reason, first.error_class, first.attempts, first.origin) == (reason, "MSG_SIZE_TOO_LARGE", 4,
                                                                                 "gw-s/worker-1")
    assert first.first_failed_at == first.last_failed_at and first.last_failed_at.endswith("Z")
    assert orjson.loads(first.payload)["id"] == "evt-0"
    assert first.to_dict()["original_topic"] == topic and first.to_dict()["offset"] == 0
    assert store.count() == 6 and store.get("p0:3").event_id == "evt-3"
    with pytest.raises(KeyError):
        store.get("p0:99")

    assert store.remove(["p0:2"]) == 1  # in the middle: hidden by its marker, nothing deleted yet
    assert [e.id for e in store.entries()] == ["p0:0", "p0:1", "p0:3", "p0:4", "p0:5"]
    assert store.count() == 5 and watermarks(kafka_cluster, store.topic) == (0, 6)
    with pytest.raises(KeyError):
        store.get("p0:2")

    assert store.remove(["p0:0", "p0:1", "p0:2"]) == 2  # p0:2 was removed already
    assert watermarks(kafka_cluster, store.topic) == (3, 6), "the removed head is deleted"
    markers = {m.key(): m.value() for m in records(kafka_cluster, store.markers)}
    assert markers == {b"0:0": None, b"0:1": None, b"0:2": None}, "markers below the low-water mark are tombstoned"
    assert store.count() == 3 and store.parked_keys() == {"orders:0": "evt-3", "orders:1": "evt-4",
                                                          "orders:2": "evt-5"}

    assert store.purge(3600) == 0
    assert store.purge(0) == 3
    assert store.count() == 0 and list(store.entries()) == []
    assert watermarks(kafka_cluster, store.topic) == (6, 6)


def test_parked_keys_reads_only_what_was_appended_since_it_last_asked(kafka_cluster: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    queue, context = dead_letter_queue(kafka_cluster, "gw-k", unique("orders"), partitions=2)

    def park(first: int, count: int) -> None:
        queue.put(batch_of(order_updates(range(first, first + count), keys=4)), "MSG_SIZE_TOO_LARGE: too large",
                  1, "gw-k/worker-0")

    holds = queue.store(context.profile)  # what a worker keeps asking
    read: list[str] = []
    original = holds._read
    monkeypatch.setattr(holds, "_read", lambda t, ranges: (read.append(t) or m for m in original(t, ranges)))
    try:
        park(0, 6)  # keys orders:0..3; evt-0..3 are their oldest entries
        assert holds.parked_keys() == {f"orders:{k}": f"evt-{k}" for k in range(4)}
        assert read.count(holds.topic) == 6
        park(6, 3)
        assert holds.parked_keys() == {f"orders:{k}": f"evt-{k}" for k in range(4)}
        assert read.count(holds.topic) == 9, "only the three new entries were read"

        cli = queue.store(context.profile)  # a replay or purge removes entries meanwhile
        ids = {entry.event_id: entry.id for entry in cli.entries()}
        assert cli.remove([ids["evt-0"], ids["evt-4"], ids["evt-8"]]) == 3  # every entry of orders:0
        assert cli.remove([ids["evt-1"]]) == 1  # orders:1 still has evt-5
        assert holds.parked_keys() == {"orders:1": "evt-5", "orders:2": "evt-2", "orders:3": "evt-3"}
        assert read.count(holds.topic) == 9, "removals are learnt from the markers alone"
        markers_read = read.count(holds.markers)
        assert markers_read >= 4
        assert holds.parked_keys() == queue.store(context.profile).parked_keys(), "same as a fresh read"
        assert (read.count(holds.topic), read.count(holds.markers)) == (9, markers_read)
    finally:
        queue.close()


@pytest.mark.slow
def test_list_show_replay_and_purge_a_kafka_dead_letter_topic_of_a_running_gateway(kafka_cluster: Any,
                                                                                      tmp_path: Path) -> None:
    port, topic = free_port(), unique("gw")
    gateway = Gateway(tmp_path, {
        "source": {"type": "http", "listen": f"127.0.0.1:{port}"},
        "output": {"type": "kafka", "brokers": brokers(kafka_cluster), "topic": topic, "max_request_size": 20000,
                   "topics": {"partitions": 3}},
        "dlq": {"enabled": True, "preserve_order": True, "timeout": "10s"},
    }).start()
    url = f"http://127.0.0.1:{port}/v1/events"

    def post(events: list[dict[str, Any]]) -> None:
        response = requests.post(url, data="\n".join(json.dumps(e) for e in events),
                                 headers={"Content-Type": "application/x-ndjson"}, timeout=60)
        assert response.status_code == 202, response.text

    def event(pk: int, n: int, blob: int = 0) -> dict[str, Any]:
        return {"table": "users", "operation": "UPDATE", "after": {"id": pk, "n": n, "blob": "z" * blob}}

    def delivered_of(pk: int) -> list[int]:
        return [orjson.loads(r.value())["after"]["n"] for r in records(kafka_cluster, topic)
                if r.key() == f"users:{pk}".encode()]

    try:
        gateway.wait_ready(90)
        post([event(7, 1), event(8, 1), event(7, 2, blob=60_000), event(8, 2)])  # n=2 of key 7 is too large
        post([event(7, 3), event(8, 3)])  # n=3 of key 7 is held behind it
        wait_for(lambda: delivered_of(8) == [1, 2, 3], 60, "key 8 to flow")
        assert delivered_of(7) == [1]

        listing = dlq_cli(gateway, "list")
        assert listing.returncode == 0, listing.stderr
        rows = [line.split() for line in listing.stdout.splitlines() if line.startswith("p")]
        assert len(rows) == 2 and f"2 entries in topic '{topic}.dlq'" in listing.stdout, listing.stdout
        shown = [json.loads(dlq_cli(gateway, "show", row[0]).stdout) for row in rows]
        blocker, held = sorted(shown, key=lambda e: e["event"]["after"]["n"])
        assert blocker["error_class"] == "MSG_SIZE_TOO_LARGE" and blocker["key"] == "users:7"
        assert held["reason"] == f"held behind parked event {blocker['event_id']} (dlq.preserve_order)"
        assert held["attempts"] == 0 and held["original_topic"] == topic and held["topic"] == f"{topic}.dlq"
        assert dlq_cli(gateway, "show", "p0:999999").returncode != 0

        replay = dlq_cli(gateway, "replay", "--set", "output.max_request_size=1000000")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "0 entries left" in replay.stdout, replay.stdout
        assert delivered_of(7) == [1, 2, 3], "replayed in order"

        # the running gateway releases key 7 once the topic holds none of its entries
        wait_for(lambda: "released a held key" in gateway.stderr(), 60, "the release of key 7")
        post([event(7, 4)])
        wait_for(lambda: delivered_of(7) == [1, 2, 3, 4], 60, "key 7 to be released")

        post([event(9, 1, blob=60_000)])
        wait_for(lambda: "1 entry in" in dlq_cli(gateway, "list").stdout, 60, "a new entry")
        purge = dlq_cli(gateway, "purge", "--older-than", "0s")
        assert purge.returncode == 0 and "purged 1 entry" in purge.stdout, purge.stdout + purge.stderr
        assert "0 entries in" in dlq_cli(gateway, "list").stdout
    finally:
        assert gateway.stop() == 0, gateway.stderr()[-3000:]
