"""The whole gateway (generator → workers → Kafka sink) against a 3-node Kafka cluster with brokers killed.

One 3-node cluster (RF 3, ``min.insync.replicas`` 2, ``acks: all``) is shared by the file's tests;
each test writes its own topic and reads every ``after.seq`` back with a plain consumer.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.harness.gateway import Gateway, children_of, wait_for
from tests.harness.verify import verify_sequences

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(kafka_cluster3: Any) -> Any:
    return kafka_cluster3


# --------------------------------------------------------------------------------------------- helpers


def kafka_profile(cluster: Any, topic: str, count: int, rate: int) -> dict[str, Any]:
    return {
        "gateway": {"workers": 2, "graceful_timeout": "30s", "heartbeat_timeout": "10s"},
        "source": {"type": "generator", "count": count, "rate": rate, "row_size": 300},
        "output": {"type": "kafka", "brokers": cluster.bootstrap_servers.split(","), "topic": topic,
                   "acks": "all", "topics": {"partitions": 6, "replication_factor": 3}},
        "replication": {"ack_mode": "all", "min_isr": 2},
        "compression": {"algorithm": "lz4"},
        "batching": {"max_size": 1000, "max_wait": "20ms"},
        "buffer": {"size": 32768},
    }


def samples(gateway: Gateway, name: str) -> list[float]:
    """Every sample of metric ``name`` (any labels); [] when the gateway no longer answers."""
    try:
        text = requests.get(gateway.url("/metrics"), timeout=5).text
    except requests.RequestException:
        return []
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$")
    return [float(m.group(1)) for line in text.splitlines() if (m := pattern.match(line))]


def processed(gateway: Gateway) -> float:
    return sum(samples(gateway, "savegress_events_processed_total"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its direct children (the gateway's process tree)."""
    total = 0.0
    for p in [pid, *children_of(pid)]:
        try:
            fields = (Path("/proc") / str(p) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def read_sequences(cluster: Any, topic: str, timeout: float = 120) -> list[int]:
    """``after.seq`` of every record in ``topic``, read up to each partition's high watermark."""
    consumer = Consumer({**cluster.client_config(), "group.id": f"verify-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        positions = dict.fromkeys(partitions, 0)
        seqs: list[int] = []
        deadline = time.monotonic() + timeout
        while any(positions[p] < ends[p] for p in partitions):
            assert time.monotonic() < deadline, f"read {len(seqs)} records, stuck at {positions} of {ends}"
            for message in consumer.consume(5000, timeout=0.5):
                assert message.error() is None, message.error()
                seqs.append(orjson.loads(message.value())["after"]["seq"])
                positions[message.partition()] = message.offset() + 1
        return seqs
    finally:
        consumer.close()


def leader_of(cluster: Any, topic: str, partition: int) -> int:
    return AdminClient(cluster.client_config()).list_topics(topic, timeout=10).topics[topic].partitions[
        partition].leader


# --------------------------------------------------------------------------------------------- tests


def test_broker_sigkill_mid_stream_loses_nothing(cluster: Any, tmp_path: Path) -> None:
    count, topic = 200_000, f"gw-kill-{uuid.uuid4().hex[:8]}"
    gateway = Gateway(tmp_path, kafka_profile(cluster, topic, count, rate=40_000)).start()
    started = time.monotonic()
    try:
        gateway.wait_ready(90)
        print(f"gateway ready {time.monotonic() - started:.1f}s after start")
        wait_for(lambda: processed(gateway) > 40_000, 60, "40,000 events in Kafka")
        victim = leader_of(cluster, topic, 0)
        cluster.kill(victim)
        at_kill = processed(gateway)
        print(f"killed node {victim} at {at_kill:.0f} events, {time.monotonic() - started:.1f}s in")
        wait_for(lambda: processed(gateway) > at_kill + 20_000 or gateway.process.poll() is not None, 90,
                 "streaming to go on without the killed broker")
        print(f"{processed(gateway):.0f} events delivered without node {victim}, {time.monotonic() - started:.1f}s in")
        cluster.restart(victim)
        print(f"restarted node {victim}, {time.monotonic() - started:.1f}s in")
        assert gateway.wait(180) == 0, gateway.stderr()[-5000:]
    finally:
        gateway.stop()
        if victim_down := [n for n in cluster.node_ids if not cluster.is_running(n)]:
            for node in victim_down:
                cluster.restart(node)
    print(f"gateway finished {time.monotonic() - started:.1f}s after start")
    verdict = verify_sequences(read_sequences(cluster, topic), count)
    print(f"broker SIGKILL mid-stream: {verdict}")
    assert verdict.missing == [], str(verdict)


def test_two_brokers_down_stalls_without_dropping_then_resumes(cluster: Any, tmp_path: Path) -> None:
    count, topic = 120_000, f"gw-stall-{uuid.uuid4().hex[:8]}"
    gateway = Gateway(tmp_path, kafka_profile(cluster, topic, count, rate=20_000)).start()
    down: list[int] = []
    try:
        gateway.wait_ready(90)
        wait_for(lambda: processed(gateway) > 20_000, 60, "20,000 events in Kafka")
        for node in (2, 3):
            cluster.kill(node)
            down.append(node)
        time.sleep(4)  # batches in flight at the kill settle or get stuck
        before, cpu_before, at = processed(gateway), cpu_seconds(gateway.pid), time.monotonic()
        time.sleep(6)
        after, cpu_after, elapsed = processed(gateway), cpu_seconds(gateway.pid), time.monotonic() - at
        utilization = max(samples(gateway, "savegress_buffer_utilization"))
        dropped = sum(samples(gateway, "savegress_events_dropped_total"))
        cpu = (cpu_after - cpu_before) / elapsed
        print(f"two brokers down: processed {before:.0f} -> {after:.0f} in {elapsed:.1f}s, buffer utilization "
              f"{utilization:.2f}, dropped {dropped:.0f}, gateway CPU {cpu:.2f} cores")
        assert after == before, "nothing can be acknowledged with one of three replicas and min ISR 2"
        assert dropped == 0
        assert utilization >= 0.5, "the buffer fills while the sink cannot deliver"
        assert cpu < 0.8, "the stalled gateway must wait, not spin"
        assert gateway.process.poll() is None
        restart_at = time.monotonic()
        for node in (2, 3):
            cluster.restart(node)
            down.remove(node)
        print(f"brokers back after {time.monotonic() - restart_at:.1f}s, gateway "
              f"{'running' if gateway.process.poll() is None else 'finished'}")
        assert gateway.wait(180) == 0, gateway.stderr()[-5000:]
    finally:
        gateway.stop()
        for node in down:
            cluster.restart(node)
    verdict = verify_sequences(read_sequences(cluster, topic), count)
    print(f"two brokers down and back: {verdict}")
    assert verdict.missing == [], str(verdict)
    assert "dropping them" not in gateway.stderr()
