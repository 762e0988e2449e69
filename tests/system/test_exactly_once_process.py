"""Exactly-once into Kafka under faults: SIGKILLed workers, a SIGKILLed gateway, a zombie worker,
a restarted broker. A ``read_committed`` verifier then finds every sequence number exactly once,
in order per key, and no transaction left hanging.

The short versions run in CI; ``--soak`` runs the long one (at least 50 kills).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from savegress_gw.deadletter.topic import TopicStore
from tests.harness.gateway import Gateway, wait_for
from tests.harness.pg_source import pg_profile, release, start_streaming
from tests.harness.transactions import exactly_once_profile, hanging_partitions, key_of, produce_sequenced, \
    read_committed
from tests.harness.verify import verify_sequences

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CHECKPOINT_PREFIX = "savegress.checkpoints."


def committed_count(gateway: Gateway) -> float:
    try:
        return gateway.metric("savegress_transactions_total", 'outcome="committed"')
    except Exception:  # not up yet, or between restarts
        return 0.0


def run_with_faults(workdir: Path, profile: dict[str, Any], count: int, worker_kills: int,
                    gateway_kills: int, extra_fault: Any = None, spacing_s: float = 0.0) -> tuple[int, int]:
    """Run the gateway to the end of its ``count`` events while SIGKILLing the workers in turn, the
    source process once and, in between, the whole gateway (then starting it again). Returns
    (child kills, gateway kills). Faults are at least ``spacing_s`` apart: the supervisor halts a
    gateway whose child crashes more than 5 times a minute, as it should."""
    rng = random.Random(7)
    kills = restarts = 0
    gateway = Gateway(workdir, profile).start()
    try:
        gateway.wait_ready(120)
        plan = ["worker"] * worker_kills + ["gateway"] * gateway_kills + (["extra"] if extra_fault else [])
        rng.shuffle(plan)
        plan.insert(1, "source")
        for fault in plan:
            time.sleep(spacing_s)
            before = committed_count(gateway)
            wait_for(lambda: committed_count(gateway) >= before + 2 or gateway.process.poll() is not None, 120,
                     "two more transactions to commit")
            if gateway.process.poll() is not None:
                break  # the source finished early: faults after the end prove nothing
            if fault in ("worker", "source"):
                # workers in turn: the supervisor halts a gateway whose child crashes > 5 times a minute
                victim = gateway.child(f"worker-{kills % profile['gateway']['workers']}" if fault == "worker"
                                       else "source")
                os.kill(victim, signal.SIGKILL)
                kills += 1
            elif fault == "gateway":
                gateway.signal_group(signal.SIGKILL)
                gateway.wait(30)
                restarts += 1
                gateway = Gateway(workdir, profile).start()
                gateway.wait_ready(120)
            else:
                extra_fault(gateway)
        assert gateway.wait(600) == 0, gateway.stderr()[-5000:]
    finally:
        gateway.stop()
    return kills, restarts


def verify(config: dict[str, str], topic: str, count: int) -> None:
    assert hanging_partitions(config, topic) == {}, "a transaction is left open on the output topic"
    committed = read_committed(config, topic)
    verdict = verify_sequences(committed.sequences, count)
    print(f"exactly-once: {verdict}; order violations {len(committed.order_violations)}")
    assert verdict.missing == [], str(verdict)
    assert verdict.duplicates == 0, str(verdict)
    assert committed.order_violations == [], committed.order_violations[:10]


@pytest.mark.timeout(1800)  # the --soak version: 53 faults 6.5 s apart and 2.4M events read back
def test_sigkills_of_workers_and_gateway_leave_every_event_exactly_once(kafka_cluster: Any, tmp_path: Path,
                                                                        request: pytest.FixtureRequest) -> None:
    soak = request.config.getoption("--soak")
    count = 2_400_000 if soak else 60_000
    topic = f"eos-{uuid.uuid4().hex[:8]}"
    profile = exactly_once_profile(topic, kafka_cluster.bootstrap_servers, topic, count, rate=5_000)
    kills, restarts = run_with_faults(tmp_path, profile, count, worker_kills=48 if soak else 4,
                                      gateway_kills=4 if soak else 2, spacing_s=6.5 if soak else 0.0)
    print(f"faults: {kills} child SIGKILLs (one of the source process), {restarts} gateway SIGKILLs")
    assert kills + restarts >= (50 if soak else 6)
    verify(kafka_cluster.client_config(), topic, count)
    assert hanging_partitions(kafka_cluster.client_config(), CHECKPOINT_PREFIX + topic) == {}


def test_a_frozen_worker_and_a_broker_restart_on_three_nodes(kafka_cluster3: Any, tmp_path: Path) -> None:
    """A worker SIGSTOPped past the transaction timeout, then continued (had it a transaction open,
    the coordinator aborts it and the worker's commit is fenced; either way nothing may be lost or
    doubled), and a broker restarted mid-stream. Fencing itself is asserted directly in
    tests/integration/test_exactly_once_kafka.py."""
    count = 60_000
    topic = f"eos3-{uuid.uuid4().hex[:8]}"
    profile = exactly_once_profile(topic, kafka_cluster3.bootstrap_servers, topic, count, rate=6_000)
    profile["output"]["topics"] = {"partitions": 4, "replication_factor": 3}
    profile["replication"] = {"ack_mode": "all", "min_isr": 2}
    profile["exactly_once"]["transaction_timeout"] = "5s"
    profile["gateway"]["heartbeat_timeout"] = "60s"  # the supervisor must not replace the frozen worker first
    frozen: list[int] = []

    def freeze_then_restart_broker(gateway: Gateway) -> None:
        worker = gateway.child("worker-1")
        os.kill(worker, signal.SIGSTOP)
        time.sleep(5 + 4)  # past transaction.timeout.ms and the coordinator's abort sweep
        os.kill(worker, signal.SIGCONT)
        frozen.append(worker)
        node = kafka_cluster3.node_ids[-1]
        kafka_cluster3.kill(node)
        time.sleep(2)
        kafka_cluster3.restart(node)

    run_with_faults(tmp_path, profile, count, worker_kills=1, gateway_kills=1, extra_fault=freeze_then_restart_broker)
    assert frozen, "the freeze did not run"
    verify(kafka_cluster3.client_config(), topic, count)


def test_postgres_to_kafka_exactly_once_through_sigkills(kafka_cluster: Any, postgres: Any, pg_database: str,
                                                         tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Sequenced rows committed to PostgreSQL while workers, the source process and the whole
    gateway are SIGKILLed: every row's INSERT is in Kafka exactly once (``read_committed``)."""
    soak = request.config.getoption("--soak")
    total = 100_000 if soak else 20_000
    topic = f"eospg-{uuid.uuid4().hex[:8]}"
    postgres.execute("CREATE TABLE seqs (seq int PRIMARY KEY, pad text)", dbname=pg_database)
    profile = pg_profile(postgres, pg_database, tmp_path, gateway={"id": topic, "workers": 2},
                         exactly_once={"enabled": True, "transaction_timeout": "10s"},
                         buffer={"size": 4000})
    profile["output"] = {"type": "kafka", "brokers": kafka_cluster.bootstrap_servers.split(","), "topic": topic,
                         "topics": {"partitions": 4}}
    writer = threading.Thread(target=_write_rows, args=(postgres.dsn(dbname=pg_database), total, total / 2500),
                              daemon=True)
    try:
        gateway = start_streaming(postgres, pg_database, tmp_path, profile)
        writer.start()
        rng = random.Random(11)
        for fault in ["worker", "source", "gateway", "worker", "gateway", "worker"] * (8 if soak else 1):
            time.sleep(rng.uniform(1.0, 2.5))
            if fault == "gateway":
                gateway.signal_group(signal.SIGKILL)
                gateway.wait(30)
                gateway = start_streaming(postgres, pg_database, tmp_path, profile)
            else:
                name = "source" if fault == "source" else f"worker-{rng.randrange(2)}"
                os.kill(gateway.child(name), signal.SIGKILL)
        writer.join(300)
        assert not writer.is_alive()

        def all_rows() -> bool:
            return len(set(read_committed(kafka_cluster.client_config(), topic).sequences)) >= total
        wait_for(all_rows, 300, f"all {total} rows in Kafka", interval=2)
        assert gateway.stop() == 0
    finally:
        release(postgres, pg_database)
    verify(kafka_cluster.client_config(), topic, total)


def _write_rows(dsn: str, total: int, duration_s: float) -> None:
    """Commit rows 1..total of ``seqs``, 10 per transaction, paced over ``duration_s``."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    started = time.monotonic()
    with conn.cursor() as cur:
        for tx, first in enumerate(range(1, total + 1, 10)):
            cur.execute("INSERT INTO seqs SELECT g, repeat('p', 100) FROM generate_series(%s, %s) g",
                        (first, min(first + 9, total)))
            delay = started + (tx + 1) * duration_s / (total / 10) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    conn.close()


def kafka_to_kafka_profile(cluster: Any, topic: str, count: int) -> dict[str, Any]:
    """Exactly-once from the sequenced input topic ``<topic>-in`` to ``<topic>-out``, 3,000 events/s."""
    profile = exactly_once_profile(topic, cluster.bootstrap_servers, f"{topic}-out", count, rate=0)
    profile["source"] = {"type": "kafka", "brokers": cluster.bootstrap_servers.split(","),
                         "topics": [f"{topic}-in"], "start": "earliest"}
    profile["rate_limiting"] = {"algorithm": "token_bucket", "tokens_per_second": 3000, "burst_size": 1000}
    return profile


def run_through_kills(cluster: Any, workdir: Path, profile: dict[str, Any], arrived: Any, what: str,
                      rounds: int = 1) -> None:
    """Run ``profile`` while SIGKILLing, ``rounds`` times, a worker, the source process, the
    gateway, a worker and the gateway again, 1-2.5 s apart (the Kafka source never runs dry: the
    faults are timed, not counted in transactions), until ``arrived()``; then stop it."""
    gateway = Gateway(workdir, profile).start()
    rng = random.Random(3)
    try:
        gateway.wait_ready(120)
        for fault in ("worker", "source", "gateway", "worker", "gateway") * rounds:
            time.sleep(rng.uniform(1.0, 2.5))
            if fault == "gateway":
                gateway.signal_group(signal.SIGKILL)
                gateway.wait(30)
                gateway = Gateway(workdir, profile).start()
                gateway.wait_ready(120)
            else:
                os.kill(gateway.child("source" if fault == "source" else f"worker-{rng.randrange(2)}"),
                        signal.SIGKILL)
        wait_for(arrived, 300, what, interval=2)
        assert gateway.stop() == 0
    finally:
        gateway.stop()


def test_kafka_to_kafka_exactly_once_through_sigkills(kafka_cluster: Any, tmp_path: Path) -> None:
    """A sequenced input topic (4 partitions) read by the Kafka source: per-partition ordinals
    (offsets) survive worker, source-process and gateway SIGKILLs with nothing lost or doubled."""
    count = 40_000
    topic = f"eoskk-{uuid.uuid4().hex[:8]}"
    config = kafka_cluster.client_config()
    produce_sequenced(config, f"{topic}-in", count)
    run_through_kills(kafka_cluster, tmp_path, kafka_to_kafka_profile(kafka_cluster, topic, count),
                      lambda: len(set(read_committed(config, f"{topic}-out").sequences)) >= count,
                      f"all {count} events in the output topic")
    verify(config, f"{topic}-out", count)


@pytest.mark.timeout(1800)  # the --soak version: 50 faults over 600,000 events
@pytest.mark.parametrize("limit", ["max_request_size", "topic"])
def test_oversized_events_are_parked_in_their_transactions_and_keys_held_through_sigkills(
        kafka_cluster: Any, tmp_path: Path, limit: str, request: pytest.FixtureRequest) -> None:
    """Exactly-once with a dead-letter topic and ``dlq.preserve_order``: 1 % of the input is larger
    than the output takes, by ``output.max_request_size`` or by the output topic's own
    ``max.message.bytes`` (which the broker alone would enforce, aborting whole transactions).
    Through worker, source-process and gateway SIGKILLs, each oversized event is parked once, in
    the transaction of its batch, and every later event of its key is parked behind it; every
    earlier one is delivered. Both topics are read ``read_committed``: every sequence number is in
    exactly one of them, exactly once, in per-key order. ``--soak``: 600,000 events, 50 faults."""
    soak = request.config.getoption("--soak")
    count = 600_000 if soak else 30_000
    topic = f"eosdlq-{uuid.uuid4().hex[:8]}"
    out, parked = f"{topic}-out", f"{topic}-out.dlq"
    config = kafka_cluster.client_config()
    oversized = set(random.Random(11).sample(range(1, count + 1), count // 100))
    produce_sequenced(config, f"{topic}-in", count, oversized=oversized)
    profile = kafka_to_kafka_profile(kafka_cluster, topic, count)
    if limit == "max_request_size":
        profile["output"]["max_request_size"] = 20_000
    else:
        admin = AdminClient(config)
        admin.create_topics([NewTopic(out, 4, 1, config={"max.message.bytes": "20000"})])[out].result(30)
        profile["output"]["batch_size"] = 16_000
    profile["dlq"] = {"enabled": True, "type": "kafka", "preserve_order": True, "timeout": "10s"}
    first_oversized: dict[int, int] = {}
    for seq in sorted(oversized):
        first_oversized.setdefault(key_of(seq), seq)
    held = {seq for seq in range(1, count + 1) if seq >= first_oversized.get(key_of(seq), count + 1)}

    def all_there() -> bool:
        return len(set(read_committed(config, out).sequences) | set(read_committed(config, parked).sequences)) >= count
    run_through_kills(kafka_cluster, tmp_path, profile, all_there,
                      f"all {count} events in the output or the dead-letter topic", rounds=10 if soak else 1)
    assert hanging_partitions(config, out) == {} and hanging_partitions(config, parked) == {}
    delivered, dead = read_committed(config, out), read_committed(config, parked)
    verdict = verify_sequences(delivered.sequences + dead.sequences, count)
    print(f"exactly-once with a dead-letter topic ({limit}): {verdict}; {len(dead.sequences)} parked "
          f"({len(oversized)} oversized), {len(delivered.sequences)} delivered")
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    assert set(dead.sequences) == held and not set(delivered.sequences) & held
    assert delivered.order_violations == [] and dead.order_violations == []
    entries = list(TopicStore(parked, config).entries())
    assert {int(orjson.loads(e.payload)["after"]["seq"]) for e in entries if e.error_class == "MSG_SIZE_TOO_LARGE"} \
        == oversized
    setting = "output.max_request_size 20000" if limit == "max_request_size" else "the topic's max.message.bytes 20000"
    assert all(setting in e.reason for e in entries if e.error_class == "MSG_SIZE_TOO_LARGE")
