"""PostgreSQL change capture through the real gateway into the file sink.

A throwaway PostgreSQL (scripts/pg_local.py) with a pgbench-style ``accounts`` table; writer
processes commit transactions of ``--rows-per-tx`` ``UPDATE accounts SET abalance = abalance +
1 WHERE aid = ANY(...)`` at an offered rate. Two measurements:

* **catch-up**: ``--backlog`` changes are committed before the gateway starts; the time from its
  first to its last delivered change gives the capacity in changes/s.
* **steady**: writers offer ``--rate`` changes/s for ``--seconds``; printed are the delivered
  changes/s, commit-to-sink latency p50/p99 (the time a line was seen in the sink file minus the
  event's commit timestamp; the file is tailed every 2 ms and every 10th line is sampled) and
  the replication lag (``savegress_replication_lag_seconds`` and the slot's unconfirmed bytes,
  averaged over the first and the second half, to see whether it stays flat). The first
  ``--warmup`` seconds of the steady phase are not measured (the p99 of every 5 s window is printed too).

    python bench/pg_cdc.py [--backlog 300000] [--rate 25000] [--seconds 30] [--workers 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg2
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness.gateway import free_port  # noqa: E402
from tests.harness.postgres import pg_local  # noqa: E402

ACCOUNTS = 100_000


def writer(dsn: str, rate: float, rows_per_tx: int, stop_at: float, seed: int, done: mp.Value) -> None:
    """Commit ``rate`` changes/s (paced per transaction) until ``stop_at`` (monotonic)."""
    rng = random.Random(seed)
    # The test server commits asynchronously (WAL reaches the walsender up to wal_writer_delay
    # later); the writers commit synchronously so latency is the pipeline's, not the WAL writer's.
    conn = psycopg2.connect(dsn, options="-c synchronous_commit=on")
    conn.autocommit = True
    cur = conn.cursor()
    interval = rows_per_tx / rate
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        cur.execute("UPDATE accounts SET abalance = abalance + 1 WHERE aid = ANY(%s)",
                    ([rng.randint(1, ACCOUNTS) for _ in range(rows_per_tx)],))
        with done.get_lock():
            done.value += rows_per_tx
    conn.close()


def write_backlog(dsn: str, changes: int, rows_per_tx: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for first in range(0, changes, 5000):  # one statement per 5000 changes, committed per rows_per_tx
            cur.execute("UPDATE accounts SET abalance = abalance + 1 WHERE aid BETWEEN %s AND %s",
                        (first % ACCOUNTS + 1, first % ACCOUNTS + 5000))
    conn.close()


class Tail(threading.Thread):
    """Follows the sink file: counts lines with their arrival time, samples commit-to-sink latency."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.arrivals: list[tuple[float, int]] = []  # (time, lines so far)
        self.latencies: list[tuple[float, float]] = []  # (arrival time, seconds since commit)
        self.lines = 0

    def run(self) -> None:
        while not self.path.exists() and not self.stop.is_set():
            time.sleep(0.01)
        with open(self.path, "rb") as handle:
            rest = b""
            while not self.stop.is_set():
                chunk = handle.read()
                if not chunk:
                    time.sleep(0.002)
                    continue
                now = time.time()
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for index in range(0, len(lines), 10):
                    line = lines[index]
                    at = line.find(b'"timestamp":"')
                    if at >= 0 and b'"UPDATE"' in line:
                        stamp = line[at + 13:at + 39].decode()
                        commit = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                        self.latencies.append((now, now - commit))
                self.lines += len(lines)
                self.arrivals.append((now, self.lines))


def metric(port: int, name: str) -> float | None:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except requests.RequestException:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def start_gateway(workdir: Path, pg, workers: int, port: int) -> subprocess.Popen:
    profile = {
        "gateway": {"workers": workers, "heartbeat_timeout": "120s"},
        "source": {"type": "postgres", "host": "127.0.0.1", "port": pg.port, "database": "bench",
                   "user": "postgres", "slot_name": "bench", "publication": "bench",
                   "standby_message_interval": "1s", "heartbeat_interval_seconds": 1},
        "snapshot": {"enabled": False},
        "output": {"type": "file", "path": str(workdir / "out" / "events.jsonl"), "rotate": {"enabled": False}},
        "batching": {"max_size": 2000, "max_wait": "10ms"},
        "buffer": {"size": 32768},
        "checkpoint": {"dir": str(workdir / "checkpoints"), "interval": "1s"},
        "metrics": {"address": f"127.0.0.1:{port}"},
        "logging": {"level": "warn"},
    }
    path = workdir / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    process = subprocess.Popen([sys.executable, "-m", "savegress_gw", "start", "-c", str(path)],
                               stdout=open(workdir / "gateway.log", "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = pg.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'bench'", dbname="bench")
        if rows and rows[0][0]:
            return process
        if process.poll() is not None:
            raise SystemExit(f"gateway exited with {process.returncode}: see {workdir / 'gateway.log'}")
        time.sleep(0.1)
    raise SystemExit("the gateway did not start streaming")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=25_000, help="offered changes/s in the steady phase")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=15, help="seconds of the steady phase not measured")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--rows-per-tx", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sg-pgbench-"))
    pg = pg_local.LocalPostgres(root / "pg")
    pg.start()
    gateway = None
    try:
        pg.create_database("bench")
        pg.execute("CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))",
                   dbname="bench")
        pg.execute(f"INSERT INTO accounts SELECT g, g % 10, 0, '' FROM generate_series(1, {ACCOUNTS}) g",
                   dbname="bench")
        dsn = pg.dsn(dbname="bench")
        port = free_port()
        workdir = root / "gw"
        workdir.mkdir()
        # Create slot and publication with a first start, so the backlog is captured.
        gateway = start_gateway(workdir, pg, args.workers, port)
        gateway.terminate()
        gateway.wait(60)

        write_backlog(dsn, args.backlog, args.rows_per_tx)
        tail = Tail(workdir / "out" / "events.jsonl")
        tail.start()
        gateway = start_gateway(workdir, pg, args.workers, port)
        deadline = time.monotonic() + 600
        while tail.lines < args.backlog and time.monotonic() < deadline:
            time.sleep(0.05)
        first = next(t for t, n in tail.arrivals if n > 0)
        last = next(t for t, n in tail.arrivals if n >= args.backlog)
        catch_up = args.backlog / (last - first)
        print(f"catch-up: {args.backlog} changes in {last - first:.2f}s = {catch_up:,.0f} changes/s "
              f"(workers={args.workers})")

        start_lines = tail.lines
        done = mp.Value("q", 0)
        begin, wall_begin = time.monotonic(), time.time()
        stop_at = begin + args.seconds
        wall_end = wall_begin + args.seconds
        writers = [mp.Process(target=writer, args=(dsn, args.rate / args.writers, args.rows_per_tx, stop_at, i,
                                                   done)) for i in range(args.writers)]
        for process in writers:
            process.start()
        lag_samples: list[tuple[float, float, float]] = []
        while time.monotonic() < stop_at:
            time.sleep(1.0)
            lag = metric(port, "savegress_replication_lag_seconds")
            slot = pg.execute("SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots"
                              " WHERE slot_name = 'bench'", dbname="bench")[0][0]
            lag_samples.append((time.monotonic() - begin, lag or 0.0, float(slot)))
        for process in writers:
            process.join(60)
        offered = done.value / args.seconds
        deadline = time.monotonic() + 120
        while tail.lines - start_lines < done.value and time.monotonic() < deadline:
            time.sleep(0.05)
        window = [(t, n) for t, n in tail.arrivals if wall_begin + args.warmup <= t <= wall_end]
        delivered = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) if len(window) > 1 else 0.0
        steady = [s for t, s in tail.latencies if wall_begin + args.warmup <= t <= wall_end]
        half = len(lag_samples) // 2
        print(f"steady: offered {offered:,.0f} changes/s ({args.writers} writers, {args.rows_per_tx} rows/tx), "
              f"delivered {delivered:,.0f} changes/s over the last {args.seconds - args.warmup:.0f} of {args.seconds:.0f}s")
        print(f"commit-to-sink latency after the warm-up: p50 {percentile(steady, 0.5) * 1000:.0f} ms, "
              f"p99 {percentile(steady, 0.99) * 1000:.0f} ms ({len(steady)} samples)")
        windows = []
        for start in range(0, int(args.seconds), 5):
            part = [s for t, s in tail.latencies if wall_begin + start <= t < wall_begin + start + 5]
            windows.append(f"{percentile(part, 0.99) * 1000:.0f}")
        print(f"p99 per 5 s window from the writers' start (ms): {' '.join(windows)}")
        print("replication lag: {:.3f}s -> {:.3f}s (first/second half mean), slot unconfirmed "
              "{:,.0f} -> {:,.0f} bytes".format(
                  statistics.mean(s[1] for s in lag_samples[:half]), statistics.mean(s[1] for s in lag_samples[half:]),
                  statistics.mean(s[2] for s in lag_samples[:half]), statistics.mean(s[2] for s in lag_samples[half:])))
        tail.stop.set()
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
            gateway.wait(60)
        pg.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    main()
