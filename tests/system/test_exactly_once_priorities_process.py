"""Exactly-once with priority classes (``backpressure.strategy: weighted_fair``,
``parallel.priority.high_priority_tables: [orders]``) through SIGKILLs of the workers, the source
process and the whole gateway: a ``read_committed`` verifier finds every event exactly once, in
per-key order, and the output shows that the high class did overtake the normal one.
"""

from __future__ import annotations

import uuid
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition

from tests.harness.transactions import exactly_once_profile, hanging_partitions
from tests.system.test_exactly_once_process import CHECKPOINT_PREFIX, run_with_faults, verify

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LANES = 8


def overtakes(config: dict[str, str], topic: str, workers: int) -> int:
    """Records of ``orders`` written before a ``users`` record of a lower sequence number by the same
    worker into the same partition: each worker produces in the order its ring gives it frames,
    which is read order unless the high class went first."""
    consumer = Consumer({**config, "group.id": f"order-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                         "enable.partition.eof": True})
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    highest_orders: dict[tuple[int, int], int] = {}
    count, done = 0, set()
    try:
        while len(done) < len(partitions):
            for message in consumer.consume(5000, timeout=1.0):
                if message.error() is not None:
                    done.add(message.partition())
                    continue
                key = message.key().decode()
                worker = zlib.crc32(key.encode()) % LANES % workers
                value = orjson.loads(message.value())
                seq, slot = value["after"]["seq"], (message.partition(), worker)
                if value["table"] == "orders":
                    highest_orders[slot] = max(highest_orders.get(slot, 0), seq)
                elif highest_orders.get(slot, 0) > seq:
                    count += 1
    finally:
        consumer.close()
    return count


@pytest.mark.timeout(300)
def test_priority_classes_under_exactly_once_through_sigkills(kafka_cluster: Any, tmp_path: Path) -> None:
    count = 40_000
    topic = f"eosprio-{uuid.uuid4().hex[:8]}"
    profile = exactly_once_profile(topic, kafka_cluster.bootstrap_servers, topic, count, rate=8_000)
    profile["source"]["generator_tables"] = ["public.users", "public.orders"]
    profile["parallel"] = {"table_parallelism": LANES,
                           "priority": {"enabled": True, "high_priority_tables": ["orders"]}}
    profile["backpressure"] = {"strategy": "weighted_fair"}
    profile["buffer"] = {"size": 2000}  # the rings fill: frames wait in the classes and go 4 : 2 : 1
    kills, restarts = run_with_faults(tmp_path, profile, count, worker_kills=2, gateway_kills=1)
    print(f"faults: {kills} child SIGKILLs (one of the source process), {restarts} gateway SIGKILLs")
    assert kills >= 3 and restarts >= 1
    config = kafka_cluster.client_config()
    verify(config, topic, count)
    assert hanging_partitions(config, CHECKPOINT_PREFIX + topic) == {}
    overtaken = overtakes(config, topic, profile["gateway"]["workers"])
    print(f"users records overtaken by orders records of the same worker and partition: {overtaken}")
    assert overtaken > 0, "the high class never went first: the test proves nothing about priorities"


@pytest.mark.timeout(300)
def test_the_bundled_high_volume_profile_runs_exactly_once_through_sigkills(kafka_cluster: Any,
                                                                            tmp_path: Path) -> None:
    """config/profiles/high-volume.yaml as shipped (exactly-once, weighted_fair, high_priority_tables
    orders and payments, zstd, adaptive rate limiting, DLQ with preserve_order), with what a
    pipeline file adds (a generator source whose tables include orders and payments, the Kafka
    output) and what a 1-node test cluster needs (no HA cluster, ``min_isr`` 1)."""
    count = 30_000
    topic = f"eoshv-{uuid.uuid4().hex[:8]}"
    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "profiles" /
                              "high-volume.yaml").read_text())
    test = exactly_once_profile(topic, kafka_cluster.bootstrap_servers, topic, count, rate=6_000)
    gateway = {**test["gateway"], "heartbeat_timeout": "60s"}  # above the DLQ's default put timeout
    profile = {**shipped, "gateway": gateway, "source": test["source"], "output": test["output"],
               "ha": {"enabled": False}, "replication": {"ack_mode": "all", "min_isr": 1}}
    profile["source"]["generator_tables"] = ["public.users", "public.orders", "public.payments", "public.logs"]
    profile["exactly_once"] = {**shipped["exactly_once"], "transaction_timeout": "10s"}
    profile["parallel"] = {**shipped["parallel"], "table_parallelism": LANES}
    kills, _ = run_with_faults(tmp_path, profile, count, worker_kills=1, gateway_kills=0)
    assert kills >= 2
    verify(kafka_cluster.client_config(), topic, count)
