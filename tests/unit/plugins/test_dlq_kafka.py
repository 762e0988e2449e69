"""The Kafka dead-letter queue's profile rules, and its start without a reachable cluster.

Round trips through a real broker are in tests/integration/test_dlq_kafka.py.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from savegress_gw.errors import ProfileError
from savegress_gw.testing import build, validated
from savegress_gw_plugins.dlq import kafka as kafka_dlq
from savegress_gw_plugins.sinks import kafka as kafka_sink
from savegress_gw_plugins.sinks import stdout

PLUGINS = (kafka_dlq, kafka_sink, stdout)
KAFKA_OUTPUT = {"type": "kafka", "brokers": ["k:9092"], "topic": "cdc-events"}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ProfileError) as caught:
        validated(data, *PLUGINS)
    return caught.value.problems


def test_a_kafka_output_selects_the_kafka_queue_and_lends_it_its_connection() -> None:
    profile = validated({"output": KAFKA_OUTPUT, "dlq": {"enabled": True}}, *PLUGINS)
    assert profile.selected("dlq") == "kafka"
    assert profile.dlq.topic is None and profile.dlq.brokers is None
    assert profile.dlq.timeout == 30 and profile.dlq.max_record_size == 16 * 1024 * 1024


def test_another_output_needs_the_queues_own_brokers() -> None:
    assert problems({"output": {"type": "stdout"}, "dlq": {"type": "kafka"}}) == [
        "dlq.brokers: required when output.type is not kafka (the dead-letter topic needs a cluster)"]
    profile = validated({"output": {"type": "stdout"},
                         "dlq": {"type": "kafka", "brokers": "a:1, b:2", "sasl": {"username": "u", "password": "p"}}},
                        *PLUGINS)
    assert profile.dlq.brokers == ["a:1", "b:2"] and profile.dlq.sasl.username == "u"


def test_sasl_and_tls_only_with_the_queues_own_brokers() -> None:
    found = problems({"output": KAFKA_OUTPUT, "dlq": {"sasl": {"username": "u", "password": "p"},
                                                      "tls": {"ca_file": "/ca"}}})
    assert found == ["dlq.sasl: only used with dlq.brokers; without them the output's connection applies",
                     "dlq.tls: only used with dlq.brokers; without them the output's connection applies"]


def test_topic_rules() -> None:
    assert any("dlq.topic" in p and "longer than 249" in p
               for p in problems({"output": {**KAFKA_OUTPUT, "topic": "t" * 247}, "dlq": {}}))
    assert problems({"output": KAFKA_OUTPUT, "dlq": {"topic": "cdc-events"}}) == [
        "dlq.topic: 'cdc-events' is output.topic; parked events would mix with delivered ones"]
    assert any("dlq.topic" in p and "only letters" in p for p in problems({"output": KAFKA_OUTPUT,
                                                                           "dlq": {"topic": "dead letters"}}))
    validated({"output": {**KAFKA_OUTPUT, "topic_template": "cdc.${table}"}, "dlq": {}}, *PLUGINS)


def test_max_record_size_must_hold_what_the_output_may_send() -> None:
    assert problems({"output": {**KAFKA_OUTPUT, "max_request_size": "2MB"}, "dlq": {"max_record_size": "1MB"}}) == [
        "dlq.max_record_size: 1048576 is below output.max_request_size 2097152; parked records may be as large "
        "as delivered ones"]


def test_a_put_must_end_before_the_worker_counts_as_stalled() -> None:
    assert problems({"output": KAFKA_OUTPUT, "gateway": {"heartbeat_timeout": "20s"}, "dlq": {"timeout": "20s"}}) == [
        "dlq.timeout: 20s must be below gateway.heartbeat_timeout 20s (a put blocks the worker loop that writes "
        "the heartbeat)"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_open_fails_within_the_timeout_naming_the_brokers() -> None:
    broker = f"127.0.0.1:{closed_port()}"
    data = {"output": {"type": "stdout"},
            "dlq": {"type": "kafka", "brokers": [broker], "timeout": "500ms"}}
    started = time.monotonic()
    with pytest.raises(kafka_dlq.KafkaDlqError) as caught:
        build("dlq", data, *PLUGINS)
    assert time.monotonic() - started < 3
    assert str(caught.value).startswith(f"kafka dlq: cannot reach brokers {broker} within dlq.timeout 0.5s")
