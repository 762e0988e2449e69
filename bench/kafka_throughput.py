"""Kafka: the gateway against a raw confluent-kafka producer on the same local broker, and latency.

1. Raw producer loop: pre-built records, ``acks=all``, lz4, idempotent, one shared delivery
   callback counting reports, ``poll(0)`` after each record. The records are the very events the
   gateway's generator makes (same keys and ~275-byte JSON values, so the same compression ratio),
   built before the loop starts. Run twice: bare (key and value only: what the issue compares
   against) and with the gateway's four ``savegress-*`` headers pre-built too (the same records
   the gateway writes).
2. The gateway: generator source → Kafka sink with the same settings (1 worker).
   All rates are measured between the first and the last broker append of the run's topic
   (LogAppendTime): streaming rate, without either side's start-up and shutdown.
3. End-to-end latency, event creation (the envelope timestamp) to broker append time
   (``message.timestamp.type=LogAppendTime``): the low-latency profile at 5,000 events/s and the
   ultra-low-latency profile at 1,000 events/s, p50/p99.

    python bench/kafka_throughput.py [--events 500000] [--repeat 3] [--bootstrap host:port] [--no-latency]

Without ``--bootstrap`` it starts a 1-node Apache Kafka from scripts/kafka_local.py (fetched jars).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from kafka_local import LocalKafkaCluster  # noqa: E402

from savegress_gw.envelope import timestamp_ms  # noqa: E402
from savegress_gw.kafka.headers import event_headers  # noqa: E402
from savegress_gw.testing import make_context  # noqa: E402
from savegress_gw_plugins.sources.generator import GeneratorSource  # noqa: E402
from tests.harness.gateway import free_port  # noqa: E402

Record = tuple[str, bytes, list[tuple[str, str]]]

PRODUCER = {"acks": "all", "compression.type": "lz4", "linger.ms": 5, "batch.size": 1_000_000,
            "enable.idempotence": True}


def create_topic(bootstrap: str, topic: str, partitions: int = 6) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"message.timestamp.type": "LogAppendTime"}
    admin.create_topics([NewTopic(topic, partitions, 1, config=config)])[topic].result(30)


def append_rate(bootstrap: str, topic: str, events: int) -> float:
    """Events per second between the first and the last broker append in ``topic``.

    Measured on the broker's clock (``LogAppendTime``), so process start-up, connection set-up and
    shutdown of either side are left out: both sides are compared on their streaming rate alone.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"rate-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    first, last = [], []
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        for offset, into in ((low, first), (high - 1, last)):
            if high > low:
                consumer.assign([TopicPartition(topic, partition, offset)])
                message = consumer.poll(10)
                into.append(message.timestamp()[1])
    consumer.close()
    return events / max((max(last) - min(first)) / 1000, 1e-3)


def prebuilt_records(events: int) -> list[Record]:
    """(key, value, headers) of the events the gateway's generator makes for the same profile."""
    source = GeneratorSource(GeneratorSource.Config(count=events, row_size=300))
    source.open(make_context())
    records: list[Record] = []
    while not source.exhausted:
        read = source.read(10_000, 0.0)
        assert read is not None and read.encoded is not None
        batch = read.encoded
        records.extend(zip(batch.keys, batch.payloads, (event_headers(batch, i) for i in range(len(batch)))))
    source.close()
    return records


def raw_producer(bootstrap: str, records: list[Record], headers: bool) -> float:
    """Produce ``records`` (with their headers, or key and value only) in a plain loop."""
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
    delivered = 0

    def on_delivery(err, msg) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1

    for key, value, record_headers in records:
        while True:
            try:
                if headers:
                    producer.produce(topic, value, key, on_delivery=on_delivery, headers=record_headers)
                else:
                    producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    assert delivered == len(records), f"raw producer delivered {delivered} of {len(records)}"
    return append_rate(bootstrap, topic, len(records))


def run_gateway(profile: dict, workdir: Path) -> None:
    """Run the gateway on ``profile`` until its generator is exhausted and everything delivered."""
    run_dir = workdir / uuid.uuid4().hex[:6]  # a checkpoint per run: each starts from the beginning
    profile = {**profile, "metrics": {"address": f"127.0.0.1:{free_port()}"}, "logging": {"level": "warn"},
               "checkpoint": {"dir": str(run_dir / "ck")}}
    path = workdir / f"profile-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(profile))
    if subprocess.run([sys.executable, "-m", "savegress_gw", "start", "-c", str(path)]).returncode != 0:
        raise SystemExit("the gateway failed")


def gateway_throughput(bootstrap: str, events: int, workdir: Path) -> float:
    topic = f"bench-gw-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    profile = {
        "gateway": {"workers": 1},
        "source": {"type": "generator", "count": events, "row_size": 300},
        "output": {"type": "kafka", "brokers": [bootstrap], "topic": topic, "acks": "all", "compression": "lz4",
                   "linger_ms": 5, "batch_size": 1_000_000},
        "batching": {"max_size": 1000, "max_wait": "20ms"},
        "buffer": {"size": 65536},
    }
    run_gateway(profile, workdir)
    return append_rate(bootstrap, topic, events)


WARM_UP_MS = 1000
"""The first second after start-up (metadata, producer id) is reported apart from the steady state."""


def latency(bootstrap: str, profile_name: str, rate: int, seconds: float,
            workdir: Path) -> tuple[float, float, float, float]:
    topic = f"bench-lat-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=1)
    profile = yaml.safe_load((ROOT / "config" / "profiles" / f"{profile_name}.yaml").read_text())
    profile["source"] = {"type": "generator", "count": int(rate * seconds), "rate": rate, "row_size": 300}
    profile["output"] = {"type": "kafka", "brokers": [bootstrap], "topic": topic}
    run_gateway(profile, workdir)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    samples: list[tuple[int, float]] = []  # (created ms, latency s)
    deadline = time.monotonic() + 60
    while len(samples) < int(rate * seconds) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 1.0):
            if msg.error():
                continue
            created = timestamp_ms(orjson.loads(msg.value())["timestamp"])
            samples.append((created, (msg.timestamp()[1] - created) / 1000))
    consumer.close()
    first = min(created for created, _ in samples)
    steady = [latency for created, latency in samples if created - first >= WARM_UP_MS]
    every = statistics.quantiles([latency for _, latency in samples], n=100)
    warm = statistics.quantiles(steady, n=100)
    return every[49], every[98], warm[49], warm[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--bootstrap")
    parser.add_argument("--repeat", type=int, default=3,
                        help="alternate raw and gateway runs this many times and report the medians")
    parser.add_argument("--no-latency", action="store_true", help="throughput only")
    args = parser.parse_args()
    records = prebuilt_records(args.events)
    with tempfile.TemporaryDirectory(prefix="sg-kbench-") as tmp:
        workdir = Path(tmp)
        cluster = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            cluster = LocalKafkaCluster(workdir / "kafka", 1).start()
            bootstrap = cluster.bootstrap_servers
        try:
            print(f"kafka throughput, {args.events:,} ~275-byte generator events, acks=all, lz4, linger.ms 5, "
                  f"1 broker on {os.cpu_count()} cores; raw, raw with headers and gateway alternated "
                  f"{args.repeat}x:")
            raws, headed, gateways = [], [], []
            for _ in range(args.repeat):  # alternating keeps a change of machine load from favouring one side
                raws.append(raw_producer(bootstrap, records, headers=False))
                headed.append(raw_producer(bootstrap, records, headers=True))
                gateways.append(gateway_throughput(bootstrap, args.events, workdir))
                print(f"  run: raw {raws[-1]:,.0f} events/s, raw with headers {headed[-1]:,.0f}, gateway "
                      f"{gateways[-1]:,.0f} = {gateways[-1] / raws[-1]:.2f}x raw, "
                      f"{gateways[-1] / headed[-1]:.2f}x raw with headers")
            raw, raw_headed, gateway = map(statistics.median, (raws, headed, gateways))
            ratios = sorted(g / r for g, r in zip(gateways, raws))
            headed_ratios = sorted(g / r for g, r in zip(gateways, headed))
            print(f"  median: raw confluent-kafka producer {raw:,.0f} events/s, with the four headers "
                  f"{raw_headed:,.0f}, gateway (generator -> kafka) {gateway:,.0f} events/s")
            print(f"  gateway / raw = {gateway / raw:.2f}x (per-run {ratios[0]:.2f}..{ratios[-1]:.2f}); "
                  f"gateway / raw with headers = {gateway / raw_headed:.2f}x "
                  f"(per-run {headed_ratios[0]:.2f}..{headed_ratios[-1]:.2f})")
            if args.no_latency:
                return
            for name, rate in (("low-latency", 5000), ("ultra-low-latency", 1000)):
                p50, p99, warm50, warm99 = latency(bootstrap, name, rate, 10.0, workdir)
                print(f"  latency {name} at {rate:,} events/s (event creation to broker append time): "
                      f"steady state p50 {warm50 * 1000:.1f} ms, p99 {warm99 * 1000:.1f} ms; "
                      f"with the first second after start-up p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
        finally:
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    main()
