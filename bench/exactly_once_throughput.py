"""Exactly-once against at-least-once: the same generator → Kafka workload, the same broker, one run.

Both runs stream ``--events`` ~300-byte events through the gateway (2 workers, acks=all, lz4) into
a fresh topic; the exactly-once run adds ``exactly_once.enabled`` (one transaction per worker per
~100 ms). The rate of each is measured on the broker's clock: committed records, first to last
``LogAppendTime``, read back with ``read_committed``. Runs alternate ``--repeat`` times and the
medians are compared (target: exactly-once keeps >= 80 % of the at-least-once rate).

    python bench/exactly_once_throughput.py [--events 300000] [--repeat 3] [--bootstrap host:port]

Without ``--bootstrap`` it starts a 1-node Apache Kafka from scripts/kafka_local.py (fetched jars).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import yaml
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from kafka_local import LocalKafkaCluster  # noqa: E402

from tests.harness.gateway import free_port  # noqa: E402


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 6, 1, config={"message.timestamp.type": "LogAppendTime"})])[topic].result(30)


def committed_rate(bootstrap: str, topic: str, events: int) -> float:
    """Events/s between the first and last committed record's broker append time (all must be there)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"rate-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        seen, first, last = 0, None, None
        while seen < events:
            batch = consumer.consume(10_000, timeout=5)
            if not batch:
                positions = consumer.position([TopicPartition(topic, p) for p in partitions])
                if all(tp.offset >= ends[tp.partition] for tp in positions):
                    break
                continue
            for message in batch:
                stamp = message.timestamp()[1]
                first = stamp if first is None else min(first, stamp)
                last = stamp if last is None else max(last, stamp)
            seen += len(batch)
    finally:
        consumer.close()
    if seen != events:
        raise SystemExit(f"{topic}: {seen} committed records, expected {events}")
    return events / max((last - first) / 1000, 1e-3)


def gateway_rate(bootstrap: str, events: int, workdir: Path, exactly_once: bool) -> float:
    topic = f"bench-{'eos' if exactly_once else 'alo'}-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    profile = {
        "gateway": {"id": topic, "workers": 2},
        "source": {"type": "generator", "count": events, "row_size": 300},
        "output": {"type": "kafka", "brokers": [bootstrap], "topic": topic, "acks": "all", "compression": "lz4",
                   "linger_ms": 5, "batch_size": 1_000_000},
        "batching": {"max_size": 1000, "max_wait": "20ms"},
        "buffer": {"size": 65536},
        "metrics": {"address": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "warn"},
        "checkpoint": {"dir": str(workdir / topic)},
    }
    if exactly_once:
        profile["exactly_once"] = {"enabled": True}
    path = workdir / f"{topic}.yaml"
    path.write_text(yaml.safe_dump(profile))
    if subprocess.run([sys.executable, "-m", "savegress_gw", "start", "-c", str(path)]).returncode != 0:
        raise SystemExit("the gateway failed")
    return committed_rate(bootstrap, topic, events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sg-eosbench-") as tmp:
        workdir = Path(tmp)
        cluster = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            cluster = LocalKafkaCluster(workdir / "kafka", 1).start()
            bootstrap = cluster.bootstrap_servers
        try:
            print(f"exactly-once vs at-least-once, {args.events:,} ~300-byte events, 2 workers, acks=all, lz4, "
                  f"1 broker on {os.cpu_count()} cores, runs alternated {args.repeat}x:")
            alo, eos = [], []
            for _ in range(args.repeat):
                alo.append(gateway_rate(bootstrap, args.events, workdir, exactly_once=False))
                eos.append(gateway_rate(bootstrap, args.events, workdir, exactly_once=True))
                print(f"  run: at-least-once {alo[-1]:,.0f} events/s, exactly-once {eos[-1]:,.0f} events/s "
                      f"({eos[-1] / alo[-1]:.2f}x)")
            a, e = statistics.median(alo), statistics.median(eos)
            print(f"  median: at-least-once {a:,.0f} events/s, exactly-once {e:,.0f} events/s = {e / a:.2f}x")
        finally:
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    main()
