"""End to end: generator source → file sink with lz4-compressed segments, through the real gateway.

Runs ``savegress-gw start`` for a fixed number of ~300-byte events per worker count and prints
events/s (from ready to exit: the source stops when it has generated everything and the gateway
drains) and CPU seconds per million events (all gateway processes, from the kernel's rusage).

    python bench/e2e_file.py [--events 1000000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness.gateway import free_port  # noqa: E402


def run(events: int, workers: int, batch: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        port = free_port()
        profile = {
            "gateway": {"workers": workers},
            "source": {"type": "generator", "count": events, "row_size": 300},
            "output": {"type": "file", "path": f"{tmp}/events.jsonl",
                       "rotate": {"enabled": True, "max_size": "64MB", "max_files": 100, "compress": True}},
            "compression": {"algorithm": "lz4", "lz4": {"level": 1}},
            "batching": {"max_size": batch, "max_wait": "50ms"},
            "buffer": {"size": 65536},
            "replication": {"ack_mode": "leader"},
            "checkpoint": {"dir": f"{tmp}/checkpoints"},
            "metrics": {"address": f"127.0.0.1:{port}"},
            "logging": {"level": "warn"},
        }
        path = Path(tmp) / "profile.yaml"
        path.write_text(yaml.safe_dump(profile))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = subprocess.Popen([sys.executable, "-m", "savegress_gw", "start", "-c", str(path)])
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.01)
        started = time.perf_counter()
        if process.wait() != 0:
            raise SystemExit(f"gateway exited with {process.returncode}")
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        written = sum(f.stat().st_size for f in Path(tmp).glob("events.jsonl*"))
        print(f"  {workers} worker(s): {events:,} events in {elapsed:.2f}s = {events / elapsed:,.0f} events/s; "
              f"CPU {cpu / events * 1e6:.1f} s per million events (incl. start-up); {written / 1e6:.0f} MB on disk")
        return events / elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    print(f"generator -> file (lz4 segments), ~300-byte events, batch {args.batch}, on {os.cpu_count()} cores:")
    for workers in args.workers:
        run(args.events, workers, args.batch)


if __name__ == "__main__":
    main()
