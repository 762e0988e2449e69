"""The guide's profiles that need no external system run as shipped.

Each profile under config/profiles/ (and config/quickstart.yaml) is loaded from its file, only the
addresses a test must own are changed (the HTTP source's port, the metrics port, a spill path
outside /var/lib), and the gateway is started with it: events posted to its HTTP source must come
out of its sink (stdout, or quickstart's file) once each, and the gateway must stop cleanly.
The profiles that need Kafka or an HA cluster run in the exactly-once and HA process tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import yaml

from tests.harness.gateway import Gateway, free_port, wait_for
from tests.harness.verify import file_sink_events, verify_sequences

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STANDALONE = ["low-latency", "streaming", "at-most-once", "ultra-low-latency"]
EVENTS = 3_000


def shipped(path: Path, workdir: Path, port: int) -> dict[str, Any]:
    """The shipped profile with the HTTP source on ``port`` and any spill under ``workdir``."""
    profile = yaml.safe_load(path.read_text())
    profile.setdefault("source", {})["listen"] = f"127.0.0.1:{port}"
    overflow = profile.get("buffer", {}).get("overflow", {})
    if "path" in overflow:
        overflow["path"] = str(workdir / "overflow")
    return profile


def post_events(port: int, count: int, per_request: int = 250) -> None:
    for start in range(1, count + 1, per_request):
        body = "\n".join(json.dumps({"table": "orders", "operation": "INSERT", "after": {"seq": seq}})
                         for seq in range(start, min(start + per_request, count + 1)))
        response = requests.post(f"http://127.0.0.1:{port}/v1/events", data=body, timeout=30,
                                 headers={"Content-Type": "application/x-ndjson"})
        assert response.status_code == 202, response.text


def stdout_sequences(gateway: Gateway) -> list[int]:
    return [orjson.loads(line)["after"]["seq"] for line in gateway.stdout_path.read_bytes().splitlines()
            if line.startswith(b"{")]


def run_shipped(gateway: Gateway, port: int, delivered: Callable[[], list[int]]) -> None:
    """Post the events, wait for them, stop; ``delivered`` reads the sequence numbers the sink wrote."""
    try:
        gateway.wait_ready()
        post_events(port, EVENTS)
        wait_for(lambda: gateway.metric("savegress_events_processed_total") >= EVENTS, 30,
                 "every posted event to be delivered")
        assert gateway.metric("savegress_events_dropped_total", 'reason="rejected"') == 0
    finally:
        assert gateway.stop() == 0, gateway.stderr()[-3000:]
    verdict = verify_sequences(delivered(), EVENTS)
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    assert '"level": "error"' not in gateway.stderr(), gateway.stderr()[-3000:]


@pytest.mark.parametrize("name", STANDALONE)
@pytest.mark.timeout(120)
def test_a_guide_profile_delivers_what_its_http_source_accepted(name: str, tmp_path: Path) -> None:
    port = free_port()
    gateway = Gateway(tmp_path, shipped(ROOT / "config" / "profiles" / f"{name}.yaml", tmp_path, port)).start()
    run_shipped(gateway, port, lambda: stdout_sequences(gateway))


@pytest.mark.timeout(120)
def test_the_quickstart_profile_writes_under_its_working_directory(tmp_path: Path) -> None:
    port = free_port()
    gateway = Gateway(tmp_path, shipped(ROOT / "config" / "quickstart.yaml", tmp_path, port)).start()
    run_shipped(gateway, port, lambda: [e["after"]["seq"] for e in file_sink_events(tmp_path / "data" / "events.jsonl")])


@pytest.mark.timeout(120)
def test_the_batch_profile_holds_events_for_its_interval_and_a_stop_delivers_them(tmp_path: Path) -> None:
    """``batching: {mode: time, interval: 5m}``: nothing goes out before the interval, and a
    graceful stop delivers what is held instead of losing it."""
    port = free_port()
    gateway = Gateway(tmp_path, shipped(ROOT / "config" / "profiles" / "batch.yaml", tmp_path, port)).start()
    answers: list[int] = []
    try:
        gateway.wait_ready()
        poster = threading.Thread(target=lambda: answers.append(post_one_request(port, EVENTS)), daemon=True)
        poster.start()
        wait_for(lambda: gateway.metric("savegress_events_received_total") == EVENTS, 30, "the events to be read")
        assert gateway.metric("savegress_events_processed_total") == 0, "a batch went out before batching.interval"
        assert stdout_sequences(gateway) == []
    finally:
        assert gateway.stop() == 0, gateway.stderr()[-3000:]
    poster.join(30)
    verdict = verify_sequences(stdout_sequences(gateway), EVENTS)
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    assert answers == [202], "the request waits for the delivery at stop"
    assert "batching.interval holds events longer than source.ack_timeout" in gateway.stderr()


def post_one_request(port: int, count: int) -> int:
    body = "\n".join(json.dumps({"table": "orders", "operation": "INSERT", "after": {"seq": seq}})
                     for seq in range(1, count + 1))
    return requests.post(f"http://127.0.0.1:{port}/v1/events", data=body, timeout=60,
                         headers={"Content-Type": "application/x-ndjson"}).status_code
