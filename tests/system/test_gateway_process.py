"""Process tests: a real gateway (supervisor, source process, workers) killed and stopped mid-stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.harness.gateway import Gateway, alive, free_port, wait_for
from tests.harness.verify import file_sink_events, verify_sequences

pytestmark = pytest.mark.slow


def generator_profile(tmp_path: Path, count: int, rate: int, workers: int = 2, **extra) -> dict:
    profile = {
        "gateway": {"workers": workers, "graceful_timeout": "20s", "heartbeat_timeout": "5s"},
        "source": {"type": "generator", "count": count, "rate": rate, "row_size": 300},
        "output": {"type": "file", "path": str(tmp_path / "out" / "events.jsonl"),
                   "rotate": {"enabled": True, "max_size": "4MB", "max_files": 1000, "compress": True}},
        "compression": {"algorithm": "lz4"},
        "batching": {"max_size": 500, "max_wait": "20ms"},
        "parallel": {"table_parallelism": 8},
    }
    profile.update(extra)
    (tmp_path / "out").mkdir(exist_ok=True)
    return profile


def sequences(tmp_path: Path) -> list[int]:
    return [event["after"]["seq"] for event in file_sink_events(tmp_path / "out" / "events.jsonl")]


def lines_written(tmp_path: Path) -> int:
    path = tmp_path / "out" / "events.jsonl"
    return path.stat().st_size // 300 if path.exists() else 0


def test_sigkill_of_a_worker_mid_stream_loses_nothing(tmp_path: Path) -> None:
    count = 100_000
    gateway = Gateway(tmp_path, generator_profile(tmp_path, count, rate=25_000)).start()
    try:
        gateway.wait_ready()
        wait_for(lambda: lines_written(tmp_path) > 5_000, 30, "events to reach the file")
        victim = gateway.workers()[-1]
        os.kill(victim, signal.SIGKILL)
        assert gateway.wait(120) == 0, gateway.stderr()
    finally:
        gateway.stop()
    verdict = verify_sequences(sequences(tmp_path), count)
    print(f"worker SIGKILL: {verdict}")
    assert verdict.missing == [], str(verdict)
    assert "child exited, replacing it" in gateway.stderr()


def test_sigterm_mid_stream_drains_and_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    count = 60_000
    profile = generator_profile(tmp_path, count, rate=20_000)
    gateway = Gateway(tmp_path, profile).start()
    gateway.wait_ready()
    wait_for(lambda: lines_written(tmp_path) > 5_000, 30, "events to reach the file")
    started = time.monotonic()
    assert gateway.stop(60) == 0, gateway.stderr()
    assert time.monotonic() - started < 25
    checkpoint = json.loads((tmp_path / "checkpoints" / "savegress-gw.json").read_text())
    delivered = sequences(tmp_path)
    assert max(delivered) == checkpoint["position"], "the checkpoint must be exactly what was delivered"
    assert verify_sequences(delivered, checkpoint["position"]).missing == []
    assert len(delivered) < count, "stopped mid-stream"

    restarted = Gateway(tmp_path, profile).start()
    assert restarted.wait(120) == 0, restarted.stderr()
    verdict = verify_sequences(sequences(tmp_path), count)
    print(f"SIGTERM + restart: {verdict}")
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    assert_per_key_order(file_sink_events(tmp_path / "out" / "events.jsonl"))


def assert_per_key_order(events: list[dict]) -> None:
    """Two workers share the file, but each key's events must appear in sequence order."""
    last: dict[tuple[str, int], int] = {}
    for event in events:
        key = (event["table"], event["after"]["id"])
        assert event["after"]["seq"] > last.get(key, 0), f"order broken for {key}"
        last[key] = event["after"]["seq"]
    assert len(last) > 1000, "the workload must spread over many keys"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_drains_without_loss(tmp_path: Path, signum: int) -> None:
    count = 60_000
    profile = generator_profile(tmp_path, count, rate=20_000)
    gateway = Gateway(tmp_path, profile).start()
    gateway.wait_ready()
    wait_for(lambda: lines_written(tmp_path) > 5_000, 30, "events to reach the file")
    gateway.signal_group(signum)
    assert gateway.wait(60) == 0, gateway.stderr()
    assert "replacing it" not in gateway.stderr()
    checkpoint = json.loads((tmp_path / "checkpoints" / "savegress-gw.json").read_text())
    delivered = sequences(tmp_path)
    assert verify_sequences(delivered, checkpoint["position"]).missing == []
    restarted = Gateway(tmp_path, profile).start()
    assert restarted.wait(120) == 0, restarted.stderr()
    verdict = verify_sequences(sequences(tmp_path), count)
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)


def test_a_stalled_worker_is_replaced(tmp_path: Path) -> None:
    count = 40_000
    profile = generator_profile(tmp_path, count, rate=10_000)
    profile["gateway"]["heartbeat_timeout"] = "1s"
    gateway = Gateway(tmp_path, profile).start()
    try:
        gateway.wait_ready()
        wait_for(lambda: lines_written(tmp_path) > 2_000, 30, "events to reach the file")
        victim = gateway.workers()[-1]
        os.kill(victim, signal.SIGSTOP)
        wait_for(lambda: not alive(victim), 15, "the stalled worker to be killed")
        assert gateway.wait(120) == 0, gateway.stderr()
    finally:
        gateway.stop()
    assert "child stalled, killing it" in gateway.stderr()
    assert verify_sequences(sequences(tmp_path), count).missing == []


def test_no_child_outlives_a_killed_supervisor(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, generator_profile(tmp_path, 0, rate=1_000)).start()
    gateway.wait_ready()
    children = gateway.workers()
    assert len(children) == 3  # the source process and two workers
    gateway.signal(signal.SIGKILL)
    gateway.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "every child to exit")


def test_a_worker_that_cannot_boot_halts_the_gateway(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    profile = generator_profile(tmp_path, 1000, rate=0)
    profile["output"]["path"] = str(blocker / "events.jsonl")
    gateway = Gateway(tmp_path, profile).start()
    assert gateway.wait(60) == 3
    stderr = gateway.stderr()
    assert "failed to start" in stderr and "not-a-directory" in stderr
    assert "sink 'file'" in stderr, "the error names the plugin"
    assert stderr.count("child exited, replacing it") == 0, "must halt, not crash-loop"


def test_http_202_means_the_events_are_in_the_file(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "out" / "events.jsonl"
    (tmp_path / "out").mkdir()
    gateway = Gateway(tmp_path, {
        "source": {"type": "http", "listen": f"127.0.0.1:{port}"},
        "output": {"type": "file", "path": str(out)},
        "replication": {"ack_mode": "all"},
    }).start()
    try:
        gateway.wait_ready()
        body = "\n".join(json.dumps({"table": "users", "operation": "INSERT", "after": {"id": i}}) for i in range(50))
        response = requests.post(f"http://127.0.0.1:{port}/v1/events", data=body,
                                 headers={"Content-Type": "application/x-ndjson"}, timeout=10)
        assert response.status_code == 202 and response.json() == {"accepted": 50}
        written = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(e["after"]["id"] for e in written) == list(range(50))
        assert gateway.metric("savegress_events_processed_total") == 50
    finally:
        assert gateway.stop() == 0


def test_lifecycle_hooks_reach_third_party_plugins(tmp_path: Path) -> None:
    target = tmp_path / "site"
    example = Path(__file__).resolve().parents[2] / "examples" / "savegress-gw-example-sink"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(example)], check=True)
    trace = tmp_path / "hooks.log"
    env = {"PYTHONPATH": f"{target}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "SAVEGRESS_EXAMPLE_HOOK_LOG": str(trace)}
    profile = generator_profile(tmp_path, 0, rate=2_000, workers=1)
    profile["output"] = {"type": "summary", "path": str(tmp_path / "summary.txt")}
    gateway = Gateway(tmp_path, profile, env=env).start()
    gateway.wait_ready()
    wait_for(lambda: (tmp_path / "summary.txt").exists() and (tmp_path / "summary.txt").stat().st_size, 20,
             "the third-party sink to write")
    os.kill(gateway.workers()[-1], signal.SIGKILL)
    wait_for(lambda: "exited 0 -9" in trace.read_text(), 20, "gw_worker_exited")
    wait_for(lambda: trace.read_text().count("started 0") == 2, 20, "the replacement's gw_worker_started")
    assert gateway.stop() == 0
    assert "stopping 0" in trace.read_text()
