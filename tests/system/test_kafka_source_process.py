"""The whole gateway with the Kafka source (Kafka → workers → Kafka) on the session's 1-node cluster.

A sequenced input topic (``after.seq`` 1..N, keyed, 4 partitions) is read by a real gateway process
tree while a worker and then the whole gateway are SIGKILLed; the restarted gateway must deliver
every sequence number to the output topic, with duplicates bounded by what was in flight.
Malformed records at the head of the input are skipped and counted as rejected.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.harness.gateway import Gateway, wait_for
from tests.harness.transactions import produce_sequenced
from tests.harness.verify import verify_sequences

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COUNT = 60_000
RATE = 10_000
"""Events per second the gateway may send (token bucket), so the kills land mid-stream."""
BUFFER = 2048
CHECKPOINT_S = 0.2
PARTITIONS = 4
MALFORMED = [b"{not json", orjson.dumps({"table": "users"}), orjson.dumps({"operation": "INSERT"})]
"""Records at the head of partition 0 that are no valid envelope: skipped and counted, not delivered."""


def produce_input(cluster: Any, topic: str) -> None:
    produce_sequenced(cluster.client_config(), topic, COUNT, PARTITIONS, head=tuple(MALFORMED))


def read_output(cluster: Any, topic: str) -> list[dict[str, Any]]:
    """Every envelope in ``topic``, read up to each partition's high watermark."""
    consumer = Consumer({**cluster.client_config(), "group.id": f"verify-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        positions = dict.fromkeys(partitions, 0)
        envelopes: list[dict[str, Any]] = []

        def done() -> bool:
            for message in consumer.consume(5000, timeout=0.5):
                assert message.error() is None, message.error()
                envelopes.append(orjson.loads(message.value()))
                positions[message.partition()] = message.offset() + 1
            return all(positions[p] >= ends[p] for p in partitions)
        wait_for(done, 120, f"the output topic up to {ends}", interval=0)
        return envelopes
    finally:
        consumer.close()


def output_ends(cluster: Any, topic: str) -> int:
    """Records in ``topic`` so far (0 while it does not exist)."""
    consumer = Consumer({**cluster.client_config(), "group.id": "ends"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in metadata.partitions)
    finally:
        consumer.close()


def committed(cluster: Any, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({**cluster.client_config(), "group.id": group})
    try:
        return {tp.partition: tp.offset
                for tp in consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)}
    finally:
        consumer.close()


def test_worker_and_gateway_sigkills_lose_nothing_and_duplicate_only_the_in_flight_window(
        kafka_cluster: Any, tmp_path: Path) -> None:
    source_topic, output_topic = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    group = f"gw-{uuid.uuid4().hex[:8]}"
    produce_input(kafka_cluster, source_topic)
    brokers = kafka_cluster.bootstrap_servers.split(",")
    profile = {
        "gateway": {"workers": 2, "graceful_timeout": "30s", "heartbeat_timeout": "10s"},
        "source": {"type": "kafka", "brokers": brokers, "topics": [source_topic], "group_id": group,
                   "consumer": {"session.timeout.ms": 10000}},  # the killed member leaves the group sooner
        "output": {"type": "kafka", "brokers": brokers, "topic": output_topic, "acks": "all"},
        "rate_limiting": {"algorithm": "token_bucket", "tokens_per_second": RATE, "burst_size": 500},
        "batching": {"max_size": 500, "max_wait": "20ms"},
        "buffer": {"size": BUFFER},
        "checkpoint": {"interval": f"{int(CHECKPOINT_S * 1000)}ms"},
    }
    gateway = Gateway(tmp_path, profile).start()
    try:
        gateway.wait_ready(90)
        wait_for(lambda: output_ends(kafka_cluster, output_topic) > 10_000, 120, "10,000 events in the output")
        assert gateway.metric("savegress_events_dropped_total", 'reason="rejected"') == len(MALFORMED)
        initial = sorted(gateway.workers())  # the source process is spawned first
        os.kill(initial[-1], signal.SIGKILL)
        wait_for(lambda: "child exited, replacing it" in gateway.stderr(), 30, "the worker to be replaced")
        wait_for(lambda: output_ends(kafka_cluster, output_topic) > 30_000, 120, "30,000 events in the output")
        gateway.signal_group(signal.SIGKILL)
        gateway.wait(30)
    finally:
        gateway.stop()
    at_kill = output_ends(kafka_cluster, output_topic)
    assert at_kill < COUNT, "the gateway must be killed mid-stream"

    restarted = Gateway(tmp_path, profile).start()
    try:
        restarted.wait_ready(90)
        wait_for(lambda: output_ends(kafka_cluster, output_topic) >= COUNT, 180, "every event in the output")
        wait_for(lambda: committed(kafka_cluster, group, source_topic) == ends_of(kafka_cluster, source_topic), 60,
                 "the group to commit every input offset")
        assert restarted.stop(60) == 0, restarted.stderr()[-5000:]
    finally:
        restarted.stop()
    assert "resuming from checkpoint" in restarted.stderr()

    envelopes = read_output(kafka_cluster, output_topic)
    verdict = verify_sequences([e["after"]["seq"] for e in envelopes], COUNT)
    print(f"kafka source, worker + gateway SIGKILL: {verdict}")
    assert verdict.missing == [], str(verdict)
    # In flight at a kill: the buffer, one read chunk, and what was delivered since the last checkpoint.
    window = BUFFER + 2048 + RATE * CHECKPOINT_S * 5
    assert verdict.duplicates <= 2 * window, str(verdict)
    for envelope in envelopes[:100]:
        position = envelope["position"]
        assert position["topic"] == source_topic and 0 <= position["partition"] < PARTITIONS
        assert envelope["id"] == f"in-{envelope['after']['seq']}" and envelope["source"] == "kafka"


def ends_of(cluster: Any, topic: str) -> dict[int, int]:
    consumer = Consumer({**cluster.client_config(), "group.id": "ends"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    finally:
        consumer.close()
