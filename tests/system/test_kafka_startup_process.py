"""The whole gateway started before its Kafka cluster exists: ``output.startup.wait`` waits with progress.

The gateway starts first, logs ``waiting for kafka brokers`` while nothing listens on its bootstrap
port, then a 1-node cluster starts on exactly that port; every event arrives.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import orjson
import pytest
import requests

from tests.harness.gateway import Gateway, wait_for
from tests.harness.kafka import broker_pids_under
from tests.harness.kafka import kafka_local as kl
from tests.harness.transactions import exactly_once_profile, read_committed
from tests.harness.verify import verify_sequences
from tests.system.test_kafka_process import read_sequences

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def free_base_port() -> int:
    """A client port P with P+1 (the controller's) also free, outside the ephemeral range."""
    for _ in range(200):
        port = random.randrange(20000, 30000, 10)
        if not kl.ports_in_use([port, port + 1]):
            return port
    raise AssertionError("no free pair of ports")


def log_lines(gateway: Gateway, event: str) -> list[dict]:
    lines = []
    for line in gateway.stderr().splitlines() + gateway.stdout_path.read_text().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            lines.append(record)
    return lines


def test_gateway_waits_for_brokers_that_start_later_and_delivers_everything(tmp_path: Path) -> None:
    port, count, topic = free_base_port(), 20_000, f"gw-wait-{uuid.uuid4().hex[:8]}"
    brokers = f"127.0.0.1:{port}"
    profile = {
        "gateway": {"workers": 1},
        "source": {"type": "generator", "count": count, "rate": 4000, "row_size": 200},
        "output": {"type": "kafka", "brokers": [brokers], "topic": topic, "acks": "all",
                   "startup": {"wait": True, "log_interval": "2s"}},
        "batching": {"max_size": 500, "max_wait": "20ms"},
    }
    gateway = Gateway(tmp_path, profile).start()
    cluster = kl.LocalKafkaCluster(tmp_path / "kafka", 1, base_port=port)
    try:
        gateway.wait_ready(timeout=60)
        wait_for(lambda: len(log_lines(gateway, "waiting for kafka brokers")) >= 3, 60,
                 "three progress lines while no broker listens")
        assert gateway.process is not None and gateway.process.poll() is None, "the gateway must keep waiting"
        assert gateway.metric("savegress_events_processed_total") == 0

        cluster.start()
        assert gateway.wait(timeout=180) == 0, gateway.stderr()[-3000:]

        progress = log_lines(gateway, "waiting for kafka brokers")
        print(f"{len(progress)} progress lines, the last: {progress[-1]}")
        attempts = [line["attempt"] for line in progress]
        elapsed = [line["elapsed_s"] for line in progress]
        assert attempts == sorted(attempts) and len(set(attempts)) == len(attempts)
        assert elapsed == sorted(elapsed) and elapsed[-1] >= 4
        assert all(line["brokers"] == brokers and line["last_error"] for line in progress)
        assert any("_TRANSPORT" in line["last_error"] or "refused" in line["last_error"].lower()
                   for line in progress), progress[-1]
        (streaming,) = log_lines(gateway, "kafka brokers reachable; streaming")
        assert streaming["attempts"] >= attempts[-1] and streaming["waited_s"] >= elapsed[-1]

        verdict = verify_sequences(read_sequences(cluster, topic), count)
        print(verdict)
        assert not verdict.missing and verdict.seen == count, str(verdict)
    finally:
        gateway.stop(timeout=60)
        cluster.stop(timeout=15)
        assert broker_pids_under(tmp_path / "kafka") == []


def test_exactly_once_waits_before_ready_past_the_boot_timeout_then_delivers_everything_once(
        tmp_path: Path) -> None:
    """Under exactly-once nothing can be read before the checkpoint topic, so the source process and
    the workers wait while booting: the gateway is not ready, logs progress from each of them, is
    not halted by ``gateway.boot_timeout`` (they keep their heartbeats), and once the cluster
    starts, every event is committed exactly once."""
    port, count, topic = free_base_port(), 10_000, f"gw-wait-eos-{uuid.uuid4().hex[:8]}"
    profile = exactly_once_profile(topic, f"127.0.0.1:{port}", topic, count, rate=4000)
    profile["gateway"]["boot_timeout"] = "10s"  # a boot (imports) on a loaded machine took over 5 s in a CI run
    profile["output"]["startup"] = {"wait": True, "log_interval": "2s"}
    gateway = Gateway(tmp_path, profile).start()
    cluster = kl.LocalKafkaCluster(tmp_path / "kafka", 1, base_port=port)
    try:
        def waiting_processes() -> set[str]:
            return {line.get("process", "") for line in log_lines(gateway, "waiting for kafka brokers")}
        wait_for(lambda: {"source", "worker-0", "worker-1"} <= waiting_processes(), 60,
                 "progress lines from the source process and both workers")
        time.sleep(11)  # past boot_timeout
        assert gateway.process is not None and gateway.process.poll() is None, gateway.stderr()[-3000:]
        with pytest.raises(requests.RequestException):
            requests.get(gateway.url("/health/ready"), timeout=1).raise_for_status()

        cluster.start()
        assert gateway.wait(timeout=180) == 0, gateway.stderr()[-3000:]
        committed = read_committed(cluster.client_config(), topic)
        verdict = verify_sequences(committed.sequences, count)
        print(verdict)
        assert not verdict.missing and verdict.duplicates == 0, str(verdict)
    finally:
        gateway.stop(timeout=60)
        cluster.stop(timeout=15)
        assert broker_pids_under(tmp_path / "kafka") == []


def test_without_wait_unreachable_brokers_halt_the_gateway_with_a_clear_error(tmp_path: Path) -> None:
    port = free_base_port()
    profile = {
        "gateway": {"workers": 1},
        "source": {"type": "generator", "count": 100},
        "output": {"type": "kafka", "brokers": [f"127.0.0.1:{port}"], "connect_timeout": "3s"},
    }
    gateway = Gateway(tmp_path, profile).start()
    started = time.monotonic()
    try:
        status = gateway.wait(timeout=60)
    finally:
        gateway.stop()
    print(f"halted after {time.monotonic() - started:.1f}s with status {status}")
    assert status != 0
    assert f"cannot reach brokers 127.0.0.1:{port} within connect_timeout 3s" in gateway.stderr() + \
        gateway.stdout_path.read_text()
