"""Integration tests for scripts/kafka_local.py: real Kafka 4.x brokers from Maven Central jars.

Needs Java 17+, confluent-kafka and either a filled jar cache or Maven + Maven Central
(``python scripts/kafka_local.py fetch``). Every test stops its cluster in teardown and asserts
that no broker JVM of its directory survives.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from tests.harness.kafka import broker_pids_under, running_cluster
from tests.harness.kafka import kafka_local as kl

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kafka_local.py"


# --------------------------------------------------------------------------- helpers


def _produce(config: dict[str, str], topic: str, values: list[str], timeout: float = 60) -> None:
    """Produce with acks=all + idempotence; fail on any delivery error or timeout."""
    errors: list[str] = []
    producer = Producer({**config, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    for value in values:
        producer.produce(
            topic,
            value=value.encode(),
            on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
        )
        producer.poll(0)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} messages not delivered within {timeout}s"
    assert errors == []


def _consume_all(
    config: dict[str, str], topic: str, expected: int, timeout: float = 60
) -> list[str]:
    """Read ``expected`` records of ``topic`` from the beginning with a fresh consumer group."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    values: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        consumer.subscribe([topic])
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            values.append(message.value().decode())
    finally:
        consumer.close()
    return values


def _create_topic(
    config: dict[str, str], topic: str, partitions: int, rf: int, min_isr: int
) -> None:
    admin = AdminClient(config)
    new = NewTopic(topic, partitions, rf, config={"min.insync.replicas": str(min_isr)})
    admin.create_topics([new], request_timeout=30)[topic].result(timeout=30)


def _leader_of(config: dict[str, str], topic: str, partition: int) -> int:
    metadata = AdminClient(config).list_topics(topic, timeout=10)
    return metadata.topics[topic].partitions[partition].leader


# --------------------------------------------------------------------------- tests


def test_fetch_is_idempotent_and_offline() -> None:
    first = kl.fetch()
    started = time.monotonic()
    second = kl.fetch(mvn="/nonexistent/mvn")  # a cache hit must not even look for Maven
    assert second.libs == first.libs and not second.downloaded
    assert time.monotonic() - started < 1.0
    jars = {p.name for p in first.libs.glob("*.jar")}
    assert f"kafka_2.13-{first.version}.jar" in jars
    assert any(name.startswith("log4j-slf4j") for name in jars), "no SLF4J binding: NOP logging"


def test_single_node_round_trip(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "kafka1", 1) as cluster:
        state = (tmp_path / "kafka1" / "cluster.json").read_text()
        assert cluster.bootstrap_servers in state
        assert cluster.status() == {1: True}
        assert "Kafka Server started" in cluster.log_path(1).read_text()  # logging binding works

        config = cluster.client_config()
        values = [f"single-{i}" for i in range(50)]
        _produce(config, "round-trip", values)  # auto-created topic, RF 1
        assert _consume_all(config, "round-trip", len(values)) == values


@pytest.mark.soak  # in CI, tests/system kill and restart brokers of the shared 3-node cluster
def test_three_nodes_survive_sigkill_and_restart(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "kafka3", 3) as cluster:
        config = cluster.client_config()
        cluster.warm_up_transactions()  # __transaction_state with RF 3, min ISR 2 works
        topic = "durable"
        _create_topic(config, topic, partitions=3, rf=3, min_isr=2)

        before = [f"before-{i}" for i in range(100)]
        _produce(config, topic, before)

        victim = _leader_of(config, topic, 0)  # force a leader fail-over
        cluster.kill(victim)
        assert not cluster.is_running(victim)
        assert victim not in kl.LocalKafkaCluster.attach(cluster.directory).running_nodes()

        during = [f"during-{i}" for i in range(100)]
        _produce(config, topic, during)  # 2 of 3 in sync >= min.insync.replicas

        cluster.restart(victim)  # returns once the node is back in every ISR
        metadata = AdminClient(config).list_topics(topic, timeout=10)
        for partition in metadata.topics[topic].partitions.values():
            assert sorted(partition.isrs) == [1, 2, 3], partition

        after = [f"after-{i}" for i in range(50)]
        _produce(config, topic, after)
        expected = before + during + after
        got = _consume_all(config, topic, len(expected))
        assert sorted(got) == sorted(expected)


def test_sasl_plain_authentication(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "kafka-sasl", 1, sasl_plain=True) as cluster:
        good = cluster.client_config(sasl=True)
        values = [f"sasl-{i}" for i in range(10)]
        _produce(good, "sasl-topic", values)
        assert _consume_all(good, "sasl-topic", len(values)) == values
        # The PLAINTEXT listener stays available next to SASL_PLAINTEXT.
        assert _consume_all(cluster.client_config(), "sasl-topic", len(values)) == values

        errors: list[KafkaError] = []
        bad = {**cluster.client_config(sasl=True, password="wrong-password")}
        producer = Producer({**bad, "error_cb": errors.append})
        started = time.monotonic()
        while time.monotonic() - started < 20:
            producer.poll(0.2)
            if any(e.code() == KafkaError._AUTHENTICATION for e in errors):
                break
        elapsed = time.monotonic() - started
        codes = [e.code() for e in errors]
        assert KafkaError._AUTHENTICATION in codes, f"no authentication error: {errors}"
        assert elapsed < 20
        print(f"wrong password rejected after {elapsed:.1f}s")
        assert producer.flush(0) == 0


def test_cli_start_kill_status_stop(tmp_path: Path) -> None:
    directory = tmp_path / "kafka-cli"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args, "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=180,
        )

    try:
        started = cli("start", "--nodes", "1")
        assert started.returncode == 0, started.stderr
        assert "bootstrap.servers=127.0.0.1:" in started.stdout
        assert cli("status").returncode == 0
        assert len(broker_pids_under(directory)) == 1  # detached: outlives the CLI process
        assert cli("kill", "1").returncode == 0
        assert cli("status").returncode == 3
        restarted = cli("restart", "1")
        assert restarted.returncode == 0, restarted.stderr
        assert cli("status").returncode == 0
    finally:
        stopped = cli("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert broker_pids_under(directory) == []
