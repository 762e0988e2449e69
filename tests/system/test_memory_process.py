"""The gateway's processes keep a flat memory footprint while streaming at full speed.

A reference cycle per read batch once kept every batch and its frames alive until the (rarely
run, see runtime.tune_gc) cyclic collector got to them: the source process grew by ~250 MB a
second at full speed. Short, slow tests never noticed; this one streams as fast as it can.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.harness.flaky_http import vm_rss_bytes
from tests.harness.gateway import Gateway, free_port

pytestmark = pytest.mark.slow

STREAM_S = 5.0
GROWTH_LIMIT = 150 * 1024 * 1024
"""Most a process may grow past its footprint one second into the stream (the rings and frames
in flight are already allocated by then)."""


def test_source_and_worker_memory_stays_flat_at_full_speed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    profile = {
        "gateway": {"workers": 1},
        "source": {"type": "generator", "row_size": 300},  # endless, as fast as the gateway takes it
        "output": {"type": "file", "path": str(out / "events.jsonl"),
                   "rotate": {"enabled": True, "max_size": "32MB", "max_files": 2, "compress": False}},
        "batching": {"max_size": 1000, "max_wait": "20ms"},
        "buffer": {"size": 65536},
        "metrics": {"address": f"127.0.0.1:{free_port()}"},
        "checkpoint": {"dir": str(tmp_path / "checkpoints")},
    }
    gateway = Gateway(tmp_path, profile).start()
    gateway.wait_ready()
    children = {name: gateway.child(name) for name in ("source", "worker-0")}
    time.sleep(1.0)
    baseline = {name: vm_rss_bytes(pid) for name, pid in children.items()}
    peak = dict(baseline)
    deadline = time.monotonic() + STREAM_S
    while time.monotonic() < deadline:
        for name, pid in children.items():
            peak[name] = max(peak[name], vm_rss_bytes(pid))
        time.sleep(0.1)
    delivered = gateway.metric("savegress_events_processed_total")
    gateway.signal(signal.SIGTERM)
    assert gateway.wait() == 0, gateway.stderr()
    assert delivered > 100_000, f"only {delivered:.0f} events in {STREAM_S + 1:.0f} s: not at full speed"
    for name in children:
        assert baseline[name] > 0, f"{name} ended before it was measured"
        growth = peak[name] - baseline[name]
        assert growth < GROWTH_LIMIT, (f"{name} grew by {growth / 2**20:.0f} MB while streaming "
                                       f"({baseline[name] / 2**20:.0f} -> {peak[name] / 2**20:.0f} MB)")
