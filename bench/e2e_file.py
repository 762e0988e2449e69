"""End to end: generator source → file sink with lz4-compressed segments, through the real gateway.

Runs ``savegress-gw start`` for a fixed number of ~300-byte events per worker count and prints
events/s (from ready to exit: the source stops when it has generated everything and the gateway
drains) and CPU seconds per million events (all gateway processes, from the kernel's rusage).
With ``--pitr`` every run is made twice, without and with the point-in-time-recovery archive
(``pitr.enabled``: every delivered event appended to a segment, sealed to zstd), to show its cost.

    python bench/e2e_file.py [--events 1000000] [--workers 1 2] [--pitr]
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


def run(events: int, workers: int, batch: int, pitr: bool = False) -> tuple[float, float]:
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
        if pitr:
            profile["pitr"] = {"enabled": True, "storage_dir": f"{tmp}/pitr", "granularity": "1m"}
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
        archived = sum(f.stat().st_size for f in Path(tmp).glob("pitr/**/*") if f.is_file())
        label = " with the PITR archive" if pitr else ""
        print(f"  {workers} worker(s){label}: {events:,} events in {elapsed:.2f}s = {events / elapsed:,.0f} events/s; "
              f"CPU {cpu / events * 1e6:.1f} s per million events (incl. start-up); {written / 1e6:.0f} MB on disk"
              + (f", {archived / 1e6:.0f} MB archived" if pitr else ""))
        return events / elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pitr", action="store_true", help="also run each with the PITR archive on")
    args = parser.parse_args()
    print(f"generator -> file (lz4 segments), ~300-byte events, batch {args.batch}, on {os.cpu_count()} cores:")
    for workers in args.workers:
        rate, cpu = run(args.events, workers, args.batch)
        if args.pitr:
            archived_rate, archived_cpu = run(args.events, workers, args.batch, pitr=True)
            print(f"  PITR archive: {archived_rate / rate:.2f}x the events/s, {archived_cpu / cpu:.2f}x the CPU")


if __name__ == "__main__":
    main()
