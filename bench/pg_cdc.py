"""PostgreSQL change capture through the real gateway into Kafka (default) or the file sink.

A throwaway PostgreSQL (scripts/pg_local.py) and, for ``--sink kafka``, a 1-node Apache Kafka from
scripts/kafka_local.py on the same host. Three measurements, each with its own slot, publication
and topic (or file):

* **snapshot**: ``--snapshot-rows`` rows of ~600 bytes (the 12 mixed columns of
  ``bench/pg_snapshot.py``), split evenly over ``--snapshot-tables`` tables, read by the
  gateway's initial snapshot (``snapshot.exit_after``, ``--snapshot-workers`` readers):
  rows/s between the first and the last delivered row, and from the gateway's start to its exit,
  with the CPU seconds of every process involved (gateway processes, PostgreSQL backends, broker).
  Into Kafka the topic is read only after the gateway exited (the first and last append time per
  partition), so no consumer competes for the two cores meanwhile.
* **catch-up**: ``--backlog`` changes are committed before the gateway starts; the time from its
  first to its last delivered change gives the capacity in changes/s.
* **steady**: writers commit pgbench-style ``UPDATE accounts SET abalance = abalance + 1 WHERE
  aid = ANY(...)`` transactions of ``--rows-per-tx`` rows at ``--rate`` changes/s for
  ``--seconds``; printed are the delivered changes/s, commit-to-sink latency p50/p99 (overall and
  per 5 s window) and the replication lag (``savegress_replication_lag_seconds`` and the slot's
  unconfirmed bytes, averaged over the first and the second half, to see whether it stays flat).
  The first ``--warmup`` seconds are not measured.

"Delivered" is the broker's append time (topics are created with
``message.timestamp.type=LogAppendTime`` and read back once a phase is over, so no consumer
competes for the two cores while it runs; progress meanwhile comes from the partitions'
watermarks) or, for the file sink, the time a line was seen in the file (tailed every 2 ms). Latency is that time minus the change's
PostgreSQL commit timestamp (the envelope's ``timestamp``), sampled on every 10th change.

    python bench/pg_cdc.py [--sink kafka|file] [--snapshot-rows 300000] [--snapshot-tables 1]
                           [--snapshot-workers 1] [--backlog 300000] [--rate 20000] [--seconds 60]
                           [--workers 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from pg_snapshot import SCHEMA as SNAPSHOT_SCHEMA  # noqa: E402
from tests.harness.gateway import free_port  # noqa: E402
from tests.harness.kafka import kafka_local  # noqa: E402
from tests.harness.postgres import pg_local  # noqa: E402

ACCOUNTS = 100_000
SAMPLE_EVERY = 10
"""Latency is computed for every 10th delivered change (parsing each would load the bench itself)."""
HEARTBEAT = b'"operation":"HEARTBEAT"'
KAFKA_OUTPUT = {"acks": "all", "compression": "lz4", "linger_ms": 5, "batch_size": 1_000_000}


def writer(dsn: str, rate: float, rows_per_tx: int, stop_at: float, seed: int, done: Any) -> None:
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


def write_backlog(dsn: str, changes: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for first in range(0, changes, 5000):  # one transaction per 5000 changes
            cur.execute("UPDATE accounts SET abalance = abalance + 1 WHERE aid BETWEEN %s AND %s",
                        (first % ACCOUNTS + 1, first % ACCOUNTS + 5000))
    conn.close()


def commit_time(payload: bytes) -> float | None:
    """The envelope's ``timestamp`` (the change's commit time) as Unix seconds."""
    at = payload.find(b'"timestamp":"')
    if at < 0:
        return None
    stamp = payload[at + 13:at + 39].decode()
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Delivered(threading.Thread):
    """Follows a sink: ``stamps`` holds each delivered event's delivery time (Unix seconds;
    heartbeats are not counted), ``latencies`` (delivery time, seconds since commit) of every 10th
    UPDATE."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.stamps: list[float] = []
        self.latencies: list[tuple[float, float]] = []

    @property
    def count(self) -> int:
        return len(self.stamps)

    def _sample(self, delivered_at: float, payload: bytes) -> None:
        if b'"UPDATE"' in payload:
            commit = commit_time(payload)
            if commit is not None:
                self.latencies.append((delivered_at, delivered_at - commit))

    def rate(self, begin: float, end: float) -> float:
        """Delivered events per second between the first and the last delivery in [begin, end]."""
        inside = sorted(t for t in self.stamps if begin <= t <= end)
        return (len(inside) - 1) / (inside[-1] - inside[0]) if len(inside) > 1 and inside[-1] > inside[0] else 0.0


class FileTail(Delivered):
    """The file sink's output file, tailed every 2 ms (arrival = when the line was read)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

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
                for line in lines[::SAMPLE_EVERY]:
                    self._sample(now, line)
                self.stamps.extend([now] * sum(HEARTBEAT not in line for line in lines))


class TopicReader(Delivered):
    """A Kafka topic read from the beginning; delivery = the broker's append time (LogAppendTime)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__()
        from confluent_kafka import Consumer
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                  "fetch.wait.max.ms": 5})
        self.consumer.subscribe([topic])
        self.records = 0
        """Records read, heartbeats included."""

    def run(self) -> None:
        seen = 0
        while not self.stop.is_set():
            messages = self.consumer.consume(10_000, 0.05)
            stamps = self.stamps
            for message in messages:
                if message.error():
                    continue
                self.records += 1
                appended = message.timestamp()[1] / 1000
                value = message.value()
                if HEARTBEAT in value:
                    continue
                stamps.append(appended)
                seen += 1
                if seen % SAMPLE_EVERY == 0:
                    self._sample(appended, value)
        self.consumer.close()


class Sink:
    """Where the gateway writes in one phase, and how the bench reads it back."""

    def __init__(self, kind: str, bootstrap: str | None, workdir: Path, name: str) -> None:
        self.kind, self.bootstrap, self.name = kind, bootstrap, name
        self.path = workdir / "out" / f"{name}.jsonl"
        self.topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        if kind == "kafka":
            from confluent_kafka.admin import AdminClient, NewTopic
            admin = AdminClient({"bootstrap.servers": bootstrap})
            config = {"message.timestamp.type": "LogAppendTime"}
            admin.create_topics([NewTopic(self.topic, 6, 1, config=config)])[self.topic].result(30)

    def output(self) -> dict[str, Any]:
        if self.kind == "kafka":
            return {"type": "kafka", "brokers": [self.bootstrap], "topic": self.topic, **KAFKA_OUTPUT}
        return {"type": "file", "path": str(self.path), "rotate": {"enabled": False}}

    def records(self) -> int:
        """How many records the topic holds (its partitions' watermarks; nothing is consumed)."""
        from confluent_kafka import Consumer, TopicPartition
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"count-{uuid.uuid4().hex[:6]}"})
        partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        count = 0
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            count += high - low
        consumer.close()
        return count

    def read_back(self) -> Delivered:
        """The whole topic, read once the gateway delivered it: delivery and latency come from
        the records' append times, so the bench's consumer need not run (and take CPU) meanwhile."""
        follower = TopicReader(self.bootstrap, self.topic)
        follower.start()
        total = self.records()
        deadline = time.monotonic() + 300
        while follower.records < total and time.monotonic() < deadline:
            time.sleep(0.05)
        follower.stop.set()
        follower.join(10)
        return follower

    def append_span(self) -> tuple[int, float, float]:
        """(records, first, last append time) of the topic, from the first and the last record of
        each partition (LogAppendTime)."""
        from confluent_kafka import Consumer, TopicPartition
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"span-{uuid.uuid4().hex[:6]}",
                             "enable.auto.commit": False})
        count, first, last = 0, float("inf"), 0.0
        for partition in consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            count += high - low
            for offset in {low, high - 1} if high > low else ():
                consumer.assign([TopicPartition(self.topic, partition, offset)])
                message = consumer.poll(10)
                appended = message.timestamp()[1] / 1000
                first, last = min(first, appended), max(last, appended)
        consumer.close()
        return count, first, last

    def tail(self) -> FileTail:
        """The file sink's output followed while the gateway writes it."""
        follower = FileTail(self.path)
        follower.start()
        return follower


def metric(port: int, name: str) -> float | None:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except requests.RequestException:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def start_gateway(workdir: Path, name: str, source: dict[str, Any], snapshot: dict[str, Any], output: dict[str, Any],
                  workers: int, port: int) -> subprocess.Popen:
    """Start ``savegress-gw`` on a profile written to ``workdir/<name>.yaml``."""
    profile = {
        "gateway": {"workers": workers, "heartbeat_timeout": "120s"},
        "source": source,
        "snapshot": snapshot,
        "output": output,
        "batching": {"max_size": 2000, "max_wait": "10ms"},
        "buffer": {"size": 32768},
        "checkpoint": {"dir": str(workdir / f"checkpoints-{name}"), "interval": "1s"},
        "metrics": {"address": f"127.0.0.1:{port}"},
        "logging": {"level": "warn"},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(profile))
    return subprocess.Popen([sys.executable, "-m", "savegress_gw", "start", "-c", str(path)],
                            stdout=open(workdir / "gateway.log", "ab"), stderr=subprocess.STDOUT)


def pg_source(pg: Any, slot: str, **extra: Any) -> dict[str, Any]:
    return {"type": "postgres", "host": "127.0.0.1", "port": pg.port, "database": "bench", "user": "postgres",
            "slot_name": slot, "publication": slot, "standby_message_interval": "1s",
            "heartbeat_interval_seconds": 1, **extra}


def wait_streaming(pg: Any, process: subprocess.Popen, slot: str, workdir: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = pg.execute(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'", dbname="bench")
        if rows and rows[0][0]:
            return
        if process.poll() is not None:
            raise SystemExit(f"gateway exited with {process.returncode}: see {workdir / 'gateway.log'}")
        time.sleep(0.1)
    raise SystemExit("the gateway did not start streaming")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 1)[0]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuSampler(threading.Thread):
    """CPU seconds of the processes under some root pids, by role, sampled every 0.2 s from /proc
    (a process that exits keeps its last sample). Roles: the gateway's processes by name
    (``sg-source``, ``sg-worker-0``, ...), ``postgres`` (every backend of this bench's server) and
    ``kafka`` (the broker JVM); other engineers' processes are not under these roots."""

    def __init__(self, roots: dict[int, str]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.stop = threading.Event()
        self.cpu: dict[int, tuple[str, float]] = {}
        self.baseline: dict[int, float] = {}
        self._sample(self.baseline)

    def _sample(self, into: dict[int, Any]) -> None:
        parents: dict[int, int] = {}
        stats: dict[int, tuple[str, float]] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            name, _, rest = text[text.index("(") + 1:].rpartition(")")
            fields = rest.split()
            parents[int(entry.name)] = int(fields[1])
            stats[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
        for pid, (name, seconds) in stats.items():
            role, up = None, pid
            while up > 1 and role is None:
                role = self.roots.get(up)
                up = parents.get(up, 0)
            if role is None:
                continue
            label = name if role == "gateway" and name.startswith("sg-") else role
            into[pid] = seconds if into is self.baseline else (label, seconds)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self._sample(self.cpu)

    def by_role(self) -> dict[str, float]:
        self.stop.set()
        self.join(5)
        self._sample(self.cpu)
        roles: dict[str, float] = {}
        for pid, (label, seconds) in self.cpu.items():
            roles[label] = roles.get(label, 0.0) + seconds - self.baseline.get(pid, 0.0)
        return roles


def snapshot_tables(count: int) -> list[str]:
    """The snapshot phase's table names: ``bench_rows``, or ``bench_rows_1`` … ``bench_rows_<count>``."""
    return ["bench_rows"] if count == 1 else [f"bench_rows_{i}" for i in range(1, count + 1)]


def snapshot_phase(pg: Any, workdir: Path, sink: Sink, rows: int, args: argparse.Namespace) -> None:
    """The initial snapshot of ``rows`` ~600-byte rows over ``--snapshot-tables`` tables, start
    to exit (``snapshot.exit_after``)."""
    tables = snapshot_tables(args.snapshot_tables)
    rows -= rows % len(tables)
    conn = psycopg2.connect(pg.dsn(dbname="bench"))
    conn.autocommit = True
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(SNAPSHOT_SCHEMA.format(table=table), {"rows": rows // len(tables)})
        cur.execute(f"SELECT avg(length(t::text))::int FROM (SELECT * FROM {tables[0]} LIMIT 1000) t")
        (row_bytes,) = cur.fetchone()
    conn.close()
    follower = sink.tail() if sink.kind == "file" else None
    cpu_before = children_cpu()
    started = time.time()
    gateway = start_gateway(workdir, "snapshot", pg_source(pg, "snap", tables=[f"public.{t}" for t in tables],
                                                           drop_slot_on_close=True),
                            {"enabled": True, "exit_after": True, "batch_size": args.snapshot_batch,
                             "parallel_workers": args.snapshot_workers},
                            sink.output(), args.workers, free_port())
    roots = {gateway.pid: "gateway", pg.pid: "postgres"}
    roots.update({pid: "kafka" for pid in args.broker_pids})
    sampler = CpuSampler(roots)
    sampler.start()
    if gateway.wait(900) != 0:
        raise SystemExit(f"snapshot gateway exited with {gateway.returncode}: see {workdir / 'gateway.log'}")
    exited = time.time()
    cpu = children_cpu() - cpu_before
    roles = sampler.by_role()
    if follower is None:
        delivered, first, last = sink.append_span()
    else:
        deadline = time.monotonic() + 60
        while follower.count < rows and time.monotonic() < deadline:
            time.sleep(0.05)
        follower.stop.set()
        follower.join(10)
        delivered, first, last = follower.count, follower.stamps[0], follower.stamps[-1]
    if delivered < rows:
        raise SystemExit(f"snapshot: {delivered} of {rows} rows delivered")
    if last <= first:
        raise SystemExit("snapshot: delivered too fast to time; use more --snapshot-rows")
    print(f"snapshot: {rows:,} rows (~{row_bytes} bytes of text each) -> {sink.kind}: "
          f"{rows / (last - first):,.0f} rows/s first to last delivery ({last - first:.2f}s), "
          f"{rows / (exited - started):,.0f} rows/s gateway start to exit ({exited - started:.2f}s); "
          f"gateway CPU {cpu:.1f}s = {rows / cpu:,.0f} rows per CPU-second "
          f"(batch_size {args.snapshot_batch}, {len(tables)} tables, parallel_workers {args.snapshot_workers}, "
          f"workers {args.workers}; load {loadavg()})")
    print("  CPU seconds by process (start-up included): " + ", ".join(
        f"{label} {seconds:.1f}s" for label, seconds in sorted(roles.items(), key=lambda item: -item[1])))


def stream_phases(pg: Any, workdir: Path, sink: Sink, args: argparse.Namespace) -> None:
    """Catch-up of a backlog, then the steady phase (module docstring)."""
    pg.execute("CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))",
               dbname="bench")
    pg.execute(f"INSERT INTO accounts SELECT g, g % 10, 0, '' FROM generate_series(1, {ACCOUNTS}) g",
               dbname="bench")
    dsn = pg.dsn(dbname="bench")
    port = free_port()
    source = pg_source(pg, "bench", tables=["public.accounts"])
    snapshot = {"enabled": False}
    # Create slot and publication with a first start, so the backlog is captured.
    gateway = start_gateway(workdir, "stream", source, snapshot, sink.output(), args.workers, port)
    try:
        wait_streaming(pg, gateway, "bench", workdir)
        gateway.terminate()
        gateway.wait(60)

        write_backlog(dsn, args.backlog)
        tail = sink.tail() if sink.kind == "file" else None  # Kafka is read back at the end
        earlier = 0 if tail is not None else sink.records()  # heartbeats of the first start

        def delivered_so_far() -> int:
            return tail.count if tail is not None else sink.records() - earlier

        gateway = start_gateway(workdir, "stream", source, snapshot, sink.output(), args.workers, port)
        wait_streaming(pg, gateway, "bench", workdir)
        catch_up_load = loadavg()
        deadline = time.monotonic() + 600
        while delivered_so_far() < args.backlog and time.monotonic() < deadline:
            time.sleep(0.2)

        start_count = delivered_so_far()
        done = mp.Value("q", 0)
        begin, wall_begin = time.monotonic(), time.time()
        stop_at = begin + args.seconds
        wall_end = wall_begin + args.seconds
        writers = [mp.Process(target=writer, args=(dsn, args.rate / args.writers, args.rows_per_tx, stop_at, i,
                                                   done)) for i in range(args.writers)]
        for process in writers:
            process.start()
        lag_samples: list[tuple[float, float]] = []
        loads = []
        while time.monotonic() < stop_at:
            time.sleep(1.0)
            lag = metric(port, "savegress_replication_lag_seconds")
            slot = pg.execute("SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots"
                              " WHERE slot_name = 'bench'", dbname="bench")[0][0]
            lag_samples.append((lag or 0.0, float(slot)))
            loads.append(float(loadavg()))
        for process in writers:
            process.join(60)
        offered = done.value / args.seconds
        deadline = time.monotonic() + 120
        while delivered_so_far() - start_count < done.value and time.monotonic() < deadline:
            time.sleep(0.2)
        if tail is not None:
            tail.stop.set()
        follower = tail if tail is not None else sink.read_back()
        stamps = sorted(follower.stamps)
        if len(stamps) >= args.backlog > 0:
            first, last = stamps[0], stamps[args.backlog - 1]
            print(f"catch-up: {args.backlog:,} changes in {last - first:.2f}s = {args.backlog / (last - first):,.0f} "
                  f"changes/s (workers={args.workers}; load {catch_up_load})")
        delivered = follower.rate(wall_begin + args.warmup, wall_end)
        steady = [s for t, s in follower.latencies if wall_begin + args.warmup <= t <= wall_end]
        half = len(lag_samples) // 2
        print(f"steady: offered {offered:,.0f} changes/s ({args.writers} writers, {args.rows_per_tx} rows/tx), "
              f"delivered {delivered:,.0f} changes/s over the last {args.seconds - args.warmup:.0f} of "
              f"{args.seconds:.0f}s into {sink.kind} (workers={args.workers}; load {min(loads):.1f}-{max(loads):.1f})")
        print(f"commit-to-{'broker' if sink.kind == 'kafka' else 'sink'} latency after the warm-up: "
              f"p50 {percentile(steady, 0.5) * 1000:.0f} ms, p99 {percentile(steady, 0.99) * 1000:.0f} ms "
              f"({len(steady)} samples)")
        windows = []
        for start in range(0, int(args.seconds), 5):
            part = [s for t, s in follower.latencies if wall_begin + start <= t < wall_begin + start + 5]
            windows.append(f"{percentile(part, 0.5) * 1000:.0f}/{percentile(part, 0.99) * 1000:.0f}")
        print(f"p50/p99 per 5 s window from the writers' start (ms): {' '.join(windows)}")
        print("replication lag: {:.3f}s -> {:.3f}s (first/second half mean), slot unconfirmed "
              "{:,.0f} -> {:,.0f} bytes".format(
                  statistics.mean(s[0] for s in lag_samples[:half]), statistics.mean(s[0] for s in lag_samples[half:]),
                  statistics.mean(s[1] for s in lag_samples[:half]), statistics.mean(s[1] for s in lag_samples[half:])))
    finally:
        if gateway.poll() is None:
            gateway.terminate()
            gateway.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sink", choices=("kafka", "file"), default="kafka")
    parser.add_argument("--snapshot-rows", type=int, default=300_000, help="0: no snapshot phase")
    parser.add_argument("--snapshot-batch", type=int, default=10_000, help="snapshot.batch_size")
    parser.add_argument("--snapshot-workers", type=int, default=1, help="snapshot.parallel_workers")
    parser.add_argument("--snapshot-tables", type=int, default=1, help="tables the snapshot rows are split over")
    parser.add_argument("--backlog", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=20_000, help="offered changes/s in the steady phase")
    parser.add_argument("--seconds", type=float, default=60, help="0: no catch-up and steady phases")
    parser.add_argument("--warmup", type=float, default=15, help="seconds of the steady phase not measured")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--rows-per-tx", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sg-pgbench-"))
    pg = pg_local.LocalPostgres(root / "pg")
    cluster = None
    try:
        pg.start()
        pg.create_database("bench")
        workdir = root / "gw"
        workdir.mkdir()
        bootstrap = None
        args.broker_pids = []
        if args.sink == "kafka":
            cluster = kafka_local.LocalKafkaCluster(root / "kafka", 1).start()
            bootstrap = cluster.bootstrap_servers
            args.broker_pids = [node.pid for node in cluster.state.nodes if node.pid]
        if args.snapshot_rows:
            snapshot_phase(pg, workdir, Sink(args.sink, bootstrap, workdir, "snapshot"), args.snapshot_rows, args)
        if args.seconds:
            stream_phases(pg, workdir, Sink(args.sink, bootstrap, workdir, "stream"), args)
    finally:
        if cluster is not None:
            cluster.stop()
        pg.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    main()
