"""Reliability conformance (issue 4) against the Kafka sink, with real broker failures.

* Rejections: 30 % of the events (seeded) are larger than ``output.max_request_size``, which
  librdkafka refuses per record (``MSG_SIZE_TOO_LARGE``); they go to the Kafka dead-letter topic
  and the rest to the output topic, on the session's 1-node cluster. Every event is in exactly
  one of the two, none invented.
* An outage: the broker of a 1-node cluster of this module is stopped for 6 s (30 s with
  ``--soak``) while 3,000 events/s of 1 KB stream in, then started again. With the producer's
  ``message.timeout.ms`` at 2 s (pass-through), records fail ``_MSG_TIMED_OUT`` while it is down,
  the pipeline retries, the breaker opens, and closes once the broker is back: nothing lost,
  memory bounded (the bound of :mod:`tests.system.test_conformance`).
* SIGKILL of the supervisor while the broker is down and the gateway spills, then the broker and
  the gateway are started again: nothing lost.

Every dlq command on the Kafka dead-letter topic, with a replay after the sink recovers, runs in
``tests/integration/test_dlq_kafka_store.py``; 10x overload per backpressure strategy runs
against the webhook sink only (the strategies live in the source process, before any sink).
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from confluent_kafka import Consumer, TopicPartition

from savegress_gw.deadletter.topic import TopicStore
from tests.harness.flaky_http import MB, Sampler, dir_size, final_counters, gateway_probes, log_lines, metric_probe, \
    tree_rss_bytes
from tests.harness.gateway import alive, free_port, wait_for
from tests.harness.kafka import broker_pids_under, kafka_local
from tests.harness.verify import verify_sequences
from tests.system.test_conformance import Launch, check_memory, launch  # noqa: F401  (launch is a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A 1-node cluster this module may stop and start (the session's is shared)."""
    directory = tmp_path_factory.mktemp("kafka-outage")
    cluster = kafka_local.LocalKafkaCluster(directory, 1)
    try:
        cluster.start()
        yield cluster
    finally:
        if not cluster.is_running(cluster.node_ids[0]):
            cluster.restart(cluster.node_ids[0])
        cluster.stop(timeout=15)
        assert broker_pids_under(directory) == [], "a kafka JVM survived stop()"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def brokers(cluster: Any) -> list[str]:
    return cluster.bootstrap_servers.split(",")


def read_seqs(cluster: Any, topic: str, timeout: float = 120) -> list[int]:
    """``after.seq`` of every record of ``topic`` up to each partition's high-water mark."""
    consumer = Consumer({**cluster.client_config(), "group.id": unique("verify"), "enable.auto.commit": False})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                 for p in partitions}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in marks.items()])
        positions = {p: low for p, (low, _) in marks.items()}
        seqs: list[int] = []
        deadline = time.monotonic() + timeout
        while any(positions[p] < marks[p][1] for p in partitions):
            assert time.monotonic() < deadline, f"read {len(seqs)} records, stuck at {positions} of {marks}"
            for message in consumer.consume(5000, timeout=0.5):
                assert message.error() is None, message.error()
                seqs.append(int(orjson.loads(message.value())["after"]["seq"]))
                positions[message.partition()] = message.offset() + 1
        return seqs
    finally:
        consumer.close()


def streaming_profile(cluster: Any, topic: str, count: int, rate: float, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "gateway": {"workers": 2, "graceful_timeout": "30s", "heartbeat_timeout": "20s"},
        "source": {"type": "generator", "count": count, "rate": rate, "row_size": 1000},
        "output": {"type": "kafka", "brokers": brokers(cluster), "topic": topic,
                   "topics": {"partitions": 3, "replication_factor": 1},
                   "producer": {"message.timeout.ms": 2000}},
        "batching": {"max_size": 500, "max_wait": "20ms"},
        "retry": {"initial_delay": "100ms", "max_delay": "1s", "multiplier": 2, "jitter": 0.1},
        "circuit_breaker": {"failure_threshold": 3, "success_threshold": 2, "timeout": "1s",
                            "half_open_requests": 1},
    }
    data.update(sections)
    return data


# ---------------------------------------------------------------------------------------------
# 1. 30 % of the events refused by the producer


def test_oversize_events_are_parked_and_the_rest_delivered_none_lost_none_invented(tmp_path: Path, launch: Launch,
                                                                                  kafka_cluster: Any) -> None:
    count, per_request = 2_000, 50
    rng = random.Random(30)
    poison = {n for n in range(1, count + 1) if rng.random() < 0.3}
    port, topic = free_port(), unique("conf")
    gateway = launch({
        "gateway": {"workers": 2},
        "source": {"type": "http", "listen": f"127.0.0.1:{port}"},
        "output": {"type": "kafka", "brokers": brokers(kafka_cluster), "topic": topic, "max_request_size": 20000,
                   "topics": {"partitions": 3}},
        "dlq": {"enabled": True, "timeout": "10s"},
    })
    with Sampler(gateway_probes(gateway)) as sampler:
        gateway.wait_ready(90)
        ready_rss = tree_rss_bytes(gateway.pid)
        for first in range(1, count + 1, per_request):
            body = "\n".join(json.dumps({"table": "users", "operation": "INSERT",
                                         "after": {"id": n, "seq": n, "blob": "p" * (30_000 if n in poison else 100)}})
                             for n in range(first, first + per_request))
            response = requests.post(f"http://127.0.0.1:{port}/v1/events", data=body, timeout=120,
                                     headers={"Content-Type": "application/x-ndjson"})
            assert response.status_code == 202, response.text
        assert gateway.stop() == 0, gateway.stderr()[-5000:]
    delivered = read_seqs(kafka_cluster, topic)
    store = TopicStore(f"{topic}.dlq", kafka_cluster.client_config())
    entries = list(store.entries())
    parked = [int(orjson.loads(e.payload)["after"]["seq"]) for e in entries]
    verdict = verify_sequences(delivered + parked, count)
    counters = final_counters(gateway)
    print(f"kafka 30% oversize: {verdict}; {len(parked)} parked, {len(delivered)} delivered; counters {counters}")
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    assert set(parked) == poison and not set(delivered) & poison
    assert {e.error_class for e in entries} == {"MSG_SIZE_TOO_LARGE"}
    assert counters["events_dead_lettered"] == len(poison)
    check_memory(sampler.samples, ready_rss, "kafka 30% oversize")


# ---------------------------------------------------------------------------------------------
# 2. the broker down for a while, then back


@pytest.mark.parametrize(("outage_s", "count"), [pytest.param(6.0, 30_000, id="6s"),
                                                  pytest.param(30.0, 120_000, id="30s", marks=pytest.mark.soak)])
def test_a_broker_outage_loses_nothing_and_the_breaker_opens_and_closes(tmp_path: Path, launch: Launch,
                                                                        own_cluster: Any, outage_s: float,
                                                                        count: int) -> None:
    topic = unique("outage")
    node = own_cluster.node_ids[0]
    gateway = launch(streaming_profile(own_cluster, topic, count, rate=3_000))
    breaker = metric_probe(gateway, "savegress_circuit_breaker_state")
    processed = metric_probe(gateway, "savegress_events_processed_total")
    with Sampler(gateway_probes(gateway, breaker=breaker)) as sampler:
        gateway.wait_ready(90)
        ready_rss = tree_rss_bytes(gateway.pid)
        wait_for(lambda: (processed() or 0) >= 3_000, 60, "events to flow")
        own_cluster.stop_node(node)
        down_at = time.monotonic()
        wait_for(lambda: breaker() == 2, 30, "the breaker to open", interval=0.05)
        opened_after = time.monotonic() - down_at
        time.sleep(max(0.0, down_at + outage_s - time.monotonic()))
        own_cluster.restart(node)
        up_at = time.monotonic()
        wait_for(lambda: breaker() == 0, 60, "the breaker to close", interval=0.05)
        closed_after = time.monotonic() - up_at
        assert gateway.wait(180) == 0, gateway.stderr()[-5000:]
        finished_after = time.monotonic() - up_at
    verdict = verify_sequences(read_seqs(own_cluster, topic), count)
    states = [s for _, s in sampler.samples.series["breaker"]]
    timeouts = [line for line in log_lines(gateway, "sink send failed, retrying") if "_MSG_TIMED_OUT" in line["reason"]]
    print(f"kafka broker down {outage_s:g}s: {verdict}; breaker open {opened_after:.2f}s after the stop, closed "
          f"{closed_after:.2f}s after the broker was back (restart() returns once it serves), done "
          f"{finished_after:.1f}s after; {len(timeouts)} timed-out sends")
    assert verdict.missing == [], str(verdict)
    assert 2.0 in states and states[-1] == 0.0, states
    assert timeouts, "no send failed while the broker was down"
    check_memory(sampler.samples, ready_rss, f"kafka broker down {outage_s:g}s")


# ---------------------------------------------------------------------------------------------
# 3. SIGKILL of the supervisor while the broker is down and the gateway spills


def test_sigkill_mid_spill_with_the_broker_down_then_restart_loses_nothing(tmp_path: Path, launch: Launch,
                                                                           own_cluster: Any) -> None:
    topic, count = unique("spill"), 30_000
    node = own_cluster.node_ids[0]
    spill = tmp_path / "spill"
    data = streaming_profile(own_cluster, topic, count, rate=5_000, buffer={"size": 2000},
                             backpressure={"strategy": "buffer", "high_watermark": 0.5, "low_watermark": 0.2})
    data["buffer"]["overflow"] = {"path": str(spill), "max_size": 64 * MB}
    gateway = launch(data)
    processed = metric_probe(gateway, "savegress_events_processed_total")
    gateway.wait_ready(90)
    wait_for(lambda: (processed() or 0) >= 2_000, 60, "events to flow")
    own_cluster.stop_node(node)
    try:
        wait_for(lambda: dir_size(spill) >= 1 * MB, 60, "the spill to grow")
        children = gateway.workers()
        gateway.signal(signal.SIGKILL)
        gateway.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in children), 10, "the children to die with the supervisor")
        spilled_at_kill = dir_size(spill)
    finally:
        own_cluster.restart(node)
    back_at = time.monotonic()
    restarted = launch(data)
    restarted.wait_ready(90)
    ready_after = time.monotonic() - back_at
    assert restarted.wait(180) == 0, restarted.stderr()[-5000:]
    done_after = time.monotonic() - back_at
    verdict = verify_sequences(read_seqs(own_cluster, topic), count)
    print(f"kafka SIGKILL mid-spill ({spilled_at_kill / MB:.1f} MB spilled): {verdict} (at least once); restarted "
          f"ready {ready_after:.1f}s and done {done_after:.1f}s after the broker was back")
    assert verdict.missing == [], str(verdict)
    assert "recovered frames spilled by a previous run" in restarted.stderr(), "the spill was read back"
