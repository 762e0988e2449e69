"""The Kafka sink without a broker: what it does after a fatal producer error.

``open()`` waits for a broker, so these tests build the sink from a profile and run ``_start``, the
part of ``open()`` that builds the real librdkafka producer (which then tries to connect in the
background to a closed port, and queues what is produced). librdkafka raises fatal errors only on
a broker's answer (an idempotence sequence it cannot accept, a fenced producer), so the test calls
the sink's ``error_cb`` (its :class:`~savegress_gw.kafka.client_errors.ClientErrors`) the way
librdkafka's ``poll`` would, with a fatal ``KafkaError``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError

from savegress_gw.assembly import instantiate
from savegress_gw.components import Batch, Outcome, Status
from savegress_gw.envelope import encode, normalize
from savegress_gw.profile.model import validate_profile
from savegress_gw.testing import make_context, registry_of
from savegress_gw_plugins.sinks import kafka as kafka_sink

FATAL = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "Broker: Broker received an out of order sequence number",
                   fatal=True)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sink() -> Iterator[kafka_sink.KafkaSink]:
    registry = registry_of(kafka_sink)
    data = {"output": {"type": "kafka", "brokers": [f"127.0.0.1:{closed_port()}"], "topic": "events",
                       "producer": {"log_level": 0}}}
    profile = validate_profile(data, registry).profile
    built = instantiate("sink", profile, registry)
    assert isinstance(built, kafka_sink.KafkaSink)
    built._start(make_context(profile))
    try:
        yield built
    finally:
        built.close()


def batch(count: int) -> Batch:
    return encode([normalize({"table": "users", "operation": "INSERT", "after": {"id": i}}, "test")
                   for i in range(count)], time.time_ns())


def test_a_fatal_error_purges_reports_errored_and_then_poll_raises(sink: kafka_sink.KafkaSink) -> None:
    outcomes: list[Outcome] = []
    sink.send(batch(3), outcomes.append)
    sink.send(batch(2), outcomes.append)
    sink.poll(0)
    assert outcomes == [], "no broker: the records wait in librdkafka's queue"

    sink._errors(FATAL)  # what librdkafka's poll calls
    started = time.monotonic()
    with pytest.raises(kafka_sink.KafkaSinkError) as caught:
        sink.poll(0)
    assert time.monotonic() - started < kafka_sink.FATAL_DRAIN_S + 1
    assert "OUT_OF_ORDER_SEQUENCE_NUMBER" in str(caught.value) and "failed fatally" in str(caught.value)
    assert [o.status for o in outcomes] == [Status.ERRORED, Status.ERRORED], "purged before raising"
    assert all("_PURGE_QUEUE" in o.reason for o in outcomes)

    with pytest.raises(kafka_sink.KafkaSinkError, match="OUT_OF_ORDER_SEQUENCE_NUMBER"):
        sink.poll(0)  # and on every later call


def test_a_send_after_a_fatal_error_reports_errored_at_once(sink: kafka_sink.KafkaSink) -> None:
    sink._errors(FATAL)
    outcomes: list[Outcome] = []
    sink.send(batch(2), outcomes.append)
    assert len(outcomes) == 1 and outcomes[0].status is Status.ERRORED
    assert "failed fatally (restart the worker): OUT_OF_ORDER_SEQUENCE_NUMBER" in outcomes[0].reason
    with pytest.raises(kafka_sink.KafkaSinkError):
        sink.poll(0)


def test_non_fatal_errors_only_log(sink: kafka_sink.KafkaSink) -> None:
    assert sink._errors is not None
    sink._errors.opening = False  # as after open()
    sink._errors(KafkaError(KafkaError._TRANSPORT, "broker down"))
    sink._errors(KafkaError(KafkaError._ALL_BROKERS_DOWN, "all down"))
    sink.poll(0)
    outcomes: list[Outcome] = []
    sink.send(batch(1), outcomes.append)
    assert outcomes == []


def test_startup_wait_opens_without_brokers_holds_batches_and_close_reports_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_sink, "WAIT_ATTEMPT_EVERY_S", 0.2)
    registry = registry_of(kafka_sink)
    broker = f"127.0.0.1:{closed_port()}"
    data = {"output": {"type": "kafka", "brokers": [broker], "topic": "events", "connect_timeout": "1s",
                       "startup": {"wait": True, "log_interval": "1s"}, "producer": {"log_level": 0}}}
    profile = validate_profile(data, registry).profile
    sink = instantiate("sink", profile, registry)
    assert isinstance(sink, kafka_sink.KafkaSink)
    started = time.monotonic()
    sink.open(make_context(profile))  # no broker: returns instead of failing after connect_timeout
    assert time.monotonic() - started < 1.5
    outcomes: list[Outcome] = []
    sink.send(batch(2), outcomes.append)
    sink.send(batch(1), outcomes.append)
    deadline = time.monotonic() + 2.5  # well past connect_timeout
    while time.monotonic() < deadline:
        sink.poll(0.05)
    assert outcomes == [] and sink._waiting is not None and sink._waiting.attempts >= 3
    assert not sink.flush(0.3)
    sink.close()
    assert [o.status for o in outcomes] == [Status.ERRORED, Status.ERRORED]
    assert f"closed while waiting for kafka brokers {broker}" in outcomes[0].reason
