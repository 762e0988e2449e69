"""The Kafka source against a real broker (the session's 1-node Kafka 4.x with a SASL/PLAIN listener).

The source is built from profiles exactly as the gateway builds it; the tests write records with a
plain confluent-kafka producer, call ``read``/``commit`` themselves, and check the group's
committed offsets with a plain consumer.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from savegress_gw.components import SourceBatch
from savegress_gw.testing import build
from savegress_gw_plugins.sources import kafka as kafka_source
from tests.harness.gateway import wait_for
from tests.harness.kafka import kafka_local as kl

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def cluster(kafka_cluster: Any) -> Any:
    return kafka_cluster


@pytest.fixture()
def opened() -> Iterator[list[kafka_source.KafkaSource]]:
    """Sources a test opened; closed afterwards (leaving their groups)."""
    sources: list[kafka_source.KafkaSource] = []
    yield sources
    for source in sources:
        source.close()


# --------------------------------------------------------------------------------------------- helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(cluster: Any, topic: str, partitions: int = 1) -> None:
    admin = AdminClient(cluster.client_config())  # kept alive until the result is in
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def produce(cluster: Any, topic: str, records: list[tuple[bytes | None, bytes | None]],
            partition: int | None = None) -> None:
    producer = Producer({**cluster.client_config(), "enable.idempotence": True})
    errors: list[Any] = []
    for key, value in records:
        extra = {"partition": partition} if partition is not None else {}
        producer.produce(topic, value=value, key=key, on_delivery=lambda err, _: errors.append(err) if err else None,
                         **extra)
    assert producer.flush(30) == 0 and errors == []


def envelope(i: int, **extra: Any) -> bytes:
    return orjson.dumps({"id": f"evt-{i}", "schema": "public", "table": "users", "operation": "insert",
                         "after": {"id": i, "seq": i}, **extra})


def open_source(cluster: Any, opened: list[kafka_source.KafkaSource], **keys: Any) -> kafka_source.KafkaSource:
    data = {"source": {"type": "kafka", "brokers": cluster.bootstrap_servers.split(","),
                       "consumer": keys.pop("consumer", {}),
                       **keys}}
    source, _ = build("source", data, kafka_source)
    assert isinstance(source, kafka_source.KafkaSource)
    opened.append(source)
    return source


def read_until(source: kafka_source.KafkaSource, count: int, timeout: float = 60) -> list[SourceBatch]:
    """Batches read until they hold ``count`` events plus rejected records."""
    batches: list[SourceBatch] = []

    def enough() -> bool:
        batch = source.read(500, 0.2)
        if batch is not None:
            batches.append(batch)
        return sum(len(b) for b in batches) + source.rejected_total >= count
    wait_for(enough, timeout, f"{count} records from the kafka source", interval=0)
    return batches


def events_of(batches: list[SourceBatch]) -> list[dict[str, Any]]:
    return [orjson.loads(payload) for b in batches for payload in b.encoded.payloads]


def committed(cluster: Any, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({**cluster.client_config(), "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in offsets}
    finally:
        consumer.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------- tests


def test_envelopes_are_read_normalized_with_cumulative_positions_and_committed(cluster: Any, opened: list) -> None:
    topic, group = unique("src-env"), unique("grp")
    create_topic(cluster, topic, 3)
    for partition in range(3):
        produce(cluster, topic, [(None, envelope(partition * 100 + i)) for i in range(10)], partition=partition)
    source = open_source(cluster, opened, topics=[topic], group_id=group)
    batches = read_until(source, 30)
    events = events_of(batches)
    assert sorted(e["after"]["seq"] for e in events) == sorted(p * 100 + i for p in range(3) for i in range(10))
    for event in events:
        assert event["operation"] == "INSERT" and event["source"] == "kafka" and event["timestamp"]
        position = event["position"]
        assert set(position) == {"topic", "partition", "offset"} and position["topic"] == topic
        assert event["after"]["seq"] == position["partition"] * 100 + position["offset"]
    assert batches[0].encoded.keys[0] == f"users:{events[0]['after']['id']}"
    # Positions are cumulative: each covers every partition read so far, offsets never go back.
    for earlier, later in zip(batches, batches[1:]):
        assert set(earlier.position) <= set(later.position)
        assert all(later.position[name] >= offset for name, offset in earlier.position.items())
    assert batches[-1].position == {f"{topic}:{p}": 10 for p in range(3)}

    middle = batches[0].position
    source.commit(middle)
    assert committed(cluster, group, topic, 3) == {p: middle.get(f"{topic}:{p}", -1001) for p in range(3)}
    source.commit(batches[-1].position)
    assert committed(cluster, group, topic, 3) == {0: 10, 1: 10, 2: 10}
    source.commit(middle)  # an older position never moves committed offsets back
    assert committed(cluster, group, topic, 3) == {0: 10, 1: 10, 2: 10}
    source.close()

    produce(cluster, topic, [(None, envelope(1000 + i)) for i in range(3)], partition=1)
    again = open_source(cluster, opened, topics=[topic], group_id=group)
    assert [e["after"]["seq"] for e in events_of(read_until(again, 3))] == [1000, 1001, 1002]


def test_what_was_read_but_not_committed_is_read_again(cluster: Any, opened: list) -> None:
    topic, group = unique("src-again"), unique("grp")
    create_topic(cluster, topic)
    produce(cluster, topic, [(None, envelope(i)) for i in range(20)])
    first = open_source(cluster, opened, topics=[topic], group_id=group)
    batches = read_until(first, 20)
    first.commit({f"{topic}:0": 8})
    first.close()
    second = open_source(cluster, opened, topics=[topic], group_id=group)
    assert [e["after"]["seq"] for e in events_of(read_until(second, 12))] == list(range(8, 20))
    assert len(events_of(batches)) == 20


def test_malformed_records_are_rejected_counted_and_skipped_by_the_position(cluster: Any, opened: list) -> None:
    topic = unique("src-bad")
    create_topic(cluster, topic)
    produce(cluster, topic, [(None, envelope(0)), (None, b"{not json"), (None, orjson.dumps({"table": "t"})),
                             (b"k", None), (None, orjson.dumps({"operation": "INSERT", "table": "t", "colour": 1})),
                             (None, envelope(5))])
    source = open_source(cluster, opened, topics=[topic], group_id=unique("grp"))
    batches = read_until(source, 6)
    assert [e["after"]["seq"] for e in events_of(batches)] == [0, 5]
    assert [(t, p, o) for t, p, o, _ in source.rejected] == [(topic, 0, o) for o in (1, 2, 3, 4)]
    reasons = [reason for *_, reason in source.rejected]
    assert "JSONDecodeError" in reasons[0] and "operation None" in reasons[1]
    assert "tombstone" in reasons[2] and "colour" in reasons[3]
    assert source.rejected_total == 4 and batches[-1].position == {f"{topic}:0": 6}


def test_a_batch_of_only_malformed_records_still_moves_the_position(cluster: Any, opened: list) -> None:
    topic = unique("src-allbad")
    create_topic(cluster, topic)
    produce(cluster, topic, [(None, b"nope"), (None, b"[1]")])
    source = open_source(cluster, opened, topics=[topic], group_id=unique("grp"))
    batches = read_until(source, 2)
    assert sum(len(b) for b in batches) == 0 and batches[-1].position == {f"{topic}:0": 2}


def test_raw_format_wraps_any_value_and_keys_events_by_record_key(cluster: Any, opened: list) -> None:
    topic = unique("src-raw")
    create_topic(cluster, topic)
    produce(cluster, topic, [(b"user-1", b'{"id": 7, "name": "Ada"}'), (None, b"[1, 2]"), (b"k2", b"plain text"),
                             (b"\xff\xfe", b"\x00\xff binary"), (b"user-1", None), (None, b"42")])
    source = open_source(cluster, opened, topics=[topic], group_id=unique("grp"), format="raw")
    batches = read_until(source, 6)
    events = events_of(batches)
    keys = [key for b in batches for key in b.encoded.keys]
    assert [e["after"] for e in events] == [{"id": 7, "name": "Ada"}, {"value": [1, 2]}, {"value": "plain text"},
                                            {"value": "AP8gYmluYXJ5"}, None, {"value": 42}]
    assert [e["operation"] for e in events] == ["INSERT"] * 4 + ["DELETE", "INSERT"]
    assert [e["metadata"] for e in events] == [
        {"kafka_key": "user-1"}, None, {"kafka_key": "k2"},
        {"kafka_key": "//4=", "kafka_key_encoding": "base64", "value_encoding": "base64"}, {"kafka_key": "user-1"},
        None]
    assert keys[0] == keys[4] == f"{topic}:user-1" and keys[2] == f"{topic}:k2"
    assert keys[1] == f"{topic}:{topic}-0-1", "without a key, the standard rule (here: the event id)"
    for offset, event in enumerate(events):
        assert event["id"] == f"{topic}-0-{offset}" and event["table"] == topic and event["schema"] is None
        assert event["position"] == {"topic": topic, "partition": 0, "offset": offset}
        assert event["source"] == "kafka" and event["timestamp"].endswith("Z")
    assert source.rejected_total == 0


def test_an_envelope_keeps_its_own_position_as_upstream(cluster: Any, opened: list) -> None:
    topic = unique("src-upstream")
    create_topic(cluster, topic)
    produce(cluster, topic, [(None, envelope(1, position={"lsn": "0/16B3748"}, source="postgres"))])
    source = open_source(cluster, opened, topics=[topic], group_id=unique("grp"))
    [event] = events_of(read_until(source, 1))
    assert event["position"] == {"topic": topic, "partition": 0, "offset": 0, "upstream": {"lsn": "0/16B3748"}}
    assert event["source"] == "postgres"


def test_seek_applies_the_position_to_assigned_partitions_and_start_to_the_rest(cluster: Any, opened: list) -> None:
    topic = unique("src-seek")
    create_topic(cluster, topic, 2)
    for partition in range(2):
        produce(cluster, topic, [(None, envelope(partition * 100 + i)) for i in range(10)], partition=partition)
    source = open_source(cluster, opened, topics=[topic], group_id=unique("grp"), start="latest")
    source.seek({f"{topic}:0": 6})
    events = events_of(read_until(source, 4))
    marker = iter(range(110, 200))

    def partition_one_read() -> bool:  # "latest" is resolved some time after the assignment
        produce(cluster, topic, [(None, envelope(next(marker)))], partition=1)
        batch = source.read(100, 0.5)
        events.extend(events_of([batch]) if batch is not None else [])
        return any(e["position"]["partition"] == 1 for e in events)
    wait_for(partition_one_read, 60, "a record written to partition 1 after the assignment", interval=0)
    by_partition = {p: [e["after"]["seq"] for e in events if e["position"]["partition"] == p] for p in (0, 1)}
    assert by_partition[0] == [6, 7, 8, 9]
    assert by_partition[1] and min(by_partition[1]) >= 110, "partition 1 has no position: it starts at latest"


def test_committed_transactions_only(cluster: Any, opened: list) -> None:
    topic = unique("src-txn")
    create_topic(cluster, topic)
    producer = Producer({**cluster.client_config(), "transactional.id": unique("txn")})
    producer.init_transactions(30)
    for values, commit in (([1, 2], True), ([3, 4], False), ([5], True)):
        producer.begin_transaction()
        for i in values:
            producer.produce(topic, envelope(i))
        producer.flush(30)
        (producer.commit_transaction if commit else producer.abort_transaction)(30)
    source = open_source(cluster, opened, topics=[topic], group_id=unique("grp"))
    batches = read_until(source, 3)
    assert [e["after"]["seq"] for e in events_of(batches)] == [1, 2, 5]
    # Offsets count transaction markers too: the position is past the last commit marker.
    assert batches[-1].position[f"{topic}:0"] > 5


def test_topic_pattern_follows_matching_topics_created_later(cluster: Any, opened: list) -> None:
    prefix = unique("src-pat")
    create_topic(cluster, f"{prefix}.a")
    create_topic(cluster, f"other-{prefix}")
    produce(cluster, f"{prefix}.a", [(None, envelope(1))])
    produce(cluster, f"other-{prefix}", [(None, envelope(99))])
    source = open_source(cluster, opened, topic_pattern=f"{prefix}\\..*", group_id=unique("grp"))
    batches = read_until(source, 1)
    assert [e["after"]["seq"] for e in events_of(batches)] == [1]
    source.commit(batches[-1].position)  # the new topic rebalances the group: the rest would be read again
    create_topic(cluster, f"{prefix}.b")
    produce(cluster, f"{prefix}.b", [(None, envelope(2))])
    assert [e["after"]["seq"] for e in events_of(read_until(source, 1, timeout=120))] == [2]


def test_a_missing_topic_is_waited_for(cluster: Any, opened: list) -> None:
    topic = unique("src-missing")
    source = open_source(cluster, opened, topics=[topic], group_id=unique("grp"))
    assert source.read(10, 1.0) is None
    create_topic(cluster, topic)
    produce(cluster, topic, [(None, envelope(1))])
    assert [e["after"]["seq"] for e in events_of(read_until(source, 1, timeout=120))] == [1]


def test_pause_holds_records_back_until_resume(cluster: Any, opened: list) -> None:
    topic = unique("src-pause")
    create_topic(cluster, topic)
    produce(cluster, topic, [(None, envelope(1))])
    source = open_source(cluster, opened, topics=[topic], group_id=unique("grp"))
    read_until(source, 1)
    source.pause()
    produce(cluster, topic, [(None, envelope(2))])
    for _ in range(10):
        assert source.read(10, 0.2) is None
    source.resume()
    assert [e["after"]["seq"] for e in events_of(read_until(source, 1))] == [2]


@pytest.mark.parametrize("strategy", ["range,roundrobin", "cooperative-sticky"])
def test_a_rebalance_splits_partitions_and_commits_only_what_a_member_owns(cluster: Any, opened: list,
                                                                          strategy: str) -> None:
    topic, group = unique("src-rebalance"), unique("grp")
    create_topic(cluster, topic, 4)
    for partition in range(4):
        produce(cluster, topic, [(None, envelope(partition * 100 + i)) for i in range(5)], partition=partition)
    consumer = {"partition.assignment.strategy": strategy}  # two gateways: two static member ids
    first = open_source(cluster, opened, topics=[topic], group_id=group,
                        consumer={**consumer, "group.instance.id": "first"})
    before = read_until(first, 20)[-1].position
    assert set(before) == {f"{topic}:{p}" for p in range(4)}
    second = open_source(cluster, opened, topics=[topic], group_id=group,
                         consumer={**consumer, "group.instance.id": "second"})

    def split() -> bool:
        first.read(100, 0.2)
        second.read(100, 0.2)
        return bool(first.assigned) and bool(second.assigned)
    wait_for(split, 120, "both members to own partitions", interval=0)
    owned = set(first.assigned)
    assert owned.isdisjoint(second.assigned) and len(owned | set(second.assigned)) == 4
    first.commit(before)  # read before the rebalance: only the partitions it still owns are committed
    offsets = committed(cluster, group, topic, 4)
    assert {p for p, offset in offsets.items() if offset == 5} == {int(name.rsplit(":", 1)[1]) for name in owned}


def test_sasl_plain_right_password_reads_wrong_password_fails_at_open(cluster: Any, opened: list) -> None:
    topic = unique("src-sasl")
    create_topic(cluster, topic)
    produce(cluster, topic, [(None, envelope(1))])
    good = {"type": "kafka", "brokers": cluster.sasl_bootstrap_servers.split(","), "topics": [topic],
            "group_id": unique("grp"),
            "sasl": {"mechanism": "PLAIN", "username": kl.SASL_USERNAME, "password": kl.SASL_PASSWORD}}
    source, _ = build("source", {"source": good}, kafka_source)
    opened.append(source)
    assert source.consumer_config["security.protocol"] == "SASL_PLAINTEXT"
    assert source.consumer_config["sasl.password"] == "***"
    assert len(events_of(read_until(source, 1))) == 1
    bad = {**good, "sasl": {**good["sasl"], "password": "wrong-password"}}
    with pytest.raises(kafka_source.KafkaSourceError, match="authentication failed") as caught:
        build("source", {"source": bad}, kafka_source)
    assert "wrong-password" not in str(caught.value)


def test_unreachable_brokers_fail_at_open_naming_them() -> None:
    brokers = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    data = {"source": {"type": "kafka", "brokers": brokers, "topics": ["t"], "connect_timeout": "2s"}}
    with pytest.raises(kafka_source.KafkaSourceError) as caught:
        build("source", data, kafka_source)
    message = str(caught.value)
    assert ",".join(brokers) in message and "connect_timeout 2s" in message and "kafka source" in message
