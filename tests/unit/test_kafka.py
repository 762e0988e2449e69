"""The shared Kafka pieces (savegress_gw.kafka) without a broker: pure helpers and a producer that
never reaches one."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from pydantic import TypeAdapter, ValidationError

from savegress_gw.components import Outcome, Status
from savegress_gw.deadletter.topic import TopicStore, TopicStoreError
from savegress_gw.kafka.codec import codec_settings, profile_codec
from savegress_gw.kafka.client_errors import MAX_OPEN_ERRORS, ClientErrors
from savegress_gw.kafka.connection import Brokers, BrokerWait, SaslOptions, TlsOptions, admin_settings, \
    client_settings, masked, no_callbacks, wait_connected
from savegress_gw.kafka.delivery import BatchDelivery
from savegress_gw.kafka.errors import KafkaClientError, describe, settling, status_of
from savegress_gw.kafka.logs import LOG_EVERY_S, RateLimitedLog
from savegress_gw.kafka.partitioning import murmur2, partition_for
from savegress_gw.kafka.topics import TOPIC_MAX, database_of, template_problem, template_topic, \
    topic_problem, topic_template_problem, uses_database
from savegress_gw.testing import validated
from savegress_gw_plugins.compressors import hybrid, lz4, none, zstd


# ------------------------------------------------------------------------------------- partitioning


@pytest.mark.parametrize(("data", "signed"), [
    # Kafka's own vectors (clients UtilsTest.testMurmur2), as the Java client's signed int
    (b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829), (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
    # librdkafka's (rdmurmur2.c unit test)
    (b"kafka", 0xD067CF64 - (1 << 32)), (b"giberish123456789", 0x8F552B0C - (1 << 32)),
])
def test_murmur2_matches_the_java_client_and_librdkafka(data: bytes, signed: int) -> None:
    assert murmur2(data) == signed & 0xFFFFFFFF


def test_partition_for_is_the_java_default_partitioner() -> None:
    assert partition_for(b"21", 6) == (-973932308 & 0x7FFFFFFF) % 6
    assert {partition_for(str(i).encode(), 6) for i in range(200)} == set(range(6))
    assert all(0 <= partition_for(str(i).encode(), 7) < 7 for i in range(100))


# --------------------------------------------------------------------------------------- connection


def brokers(value: Any) -> list[str]:
    return TypeAdapter(Brokers).validate_python(value)


def test_brokers_are_a_list_or_a_comma_separated_string_of_host_port() -> None:
    assert brokers("a:1, b:2,,") == ["a:1", "b:2"]
    assert brokers(["kafka1:9092", "[::1]:9093", "10.0.0.1:65535"]) == ["kafka1:9092", "[::1]:9093", "10.0.0.1:65535"]
    for bad in ("kafka1", "kafka1:0", "kafka1:65536", "kafka 1:9092", "kafka://k:9092", "::1:9092"):
        with pytest.raises(ValidationError, match="must be host:port"):
            brokers([bad])


@pytest.mark.parametrize(("sasl", "tls", "protocol"), [
    (None, None, "PLAINTEXT"),
    ({"mechanism": "PLAIN", "username": "u", "password": "p"}, None, "SASL_PLAINTEXT"),
    (None, {"ca_file": "/ca.pem"}, "SSL"),
    ({"username": "u", "password": "p"}, {}, "SASL_SSL"),
    ({"enabled": False}, {"enabled": False}, "PLAINTEXT"),
])
def test_security_protocol_follows_the_enabled_blocks(sasl: dict | None, tls: dict | None, protocol: str) -> None:
    conf = client_settings(["k:9092"], "gw-worker-0", SaslOptions(**sasl) if sasl is not None else None,
                           TlsOptions(**tls) if tls is not None else None)
    assert conf["security.protocol"] == protocol
    assert conf["bootstrap.servers"] == "k:9092" and conf["client.id"] == "gw-worker-0"
    assert ("sasl.password" in conf) == protocol.startswith("SASL")


def test_sasl_and_tls_settings_and_masking() -> None:
    conf = client_settings(["a:1", "b:2"], "id", SaslOptions(mechanism="SCRAM-SHA-256", username="u", password="s3"),
                           TlsOptions(ca_file="/ca", cert_file="/c", key_file="/k", skip_verify=True))
    assert conf["bootstrap.servers"] == "a:1,b:2"
    assert (conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == ("SCRAM-SHA-256", "u", "s3")
    assert (conf["ssl.ca.location"], conf["ssl.certificate.location"], conf["ssl.key.location"]) == ("/ca", "/c", "/k")
    assert conf["enable.ssl.certificate.verification"] is False
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    assert masked(conf)["sasl.password"] == "***" and conf["sasl.password"] == "s3"
    admin = admin_settings({**conf, "acks": "all", "linger.ms": 5, "enable.idempotence": True})
    assert "acks" not in admin and "linger.ms" not in admin and "enable.idempotence" not in admin
    assert admin["sasl.password"] == "s3" and admin["ssl.ca.location"] == "/ca"


def test_sasl_needs_credentials_and_tls_a_key_with_its_certificate() -> None:
    with pytest.raises(ValidationError, match="username and password"):
        SaslOptions(username="u")
    SaslOptions(enabled=False)
    with pytest.raises(ValidationError, match="go together"):
        TlsOptions(cert_file="/c")


def test_pass_through_blocks_may_not_set_callbacks() -> None:
    assert no_callbacks({"linger.ms": 1}) == {"linger.ms": 1}
    with pytest.raises(ValueError, match="error_cb is a callback"):
        no_callbacks({"error_cb": "x", "linger.ms": 1})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_wait_connected_names_the_brokers_after_the_timeout() -> None:
    broker = f"127.0.0.1:{closed_port()}"
    producer = Producer({"bootstrap.servers": broker, "log_level": 0})
    started = time.monotonic()
    with pytest.raises(KafkaClientError) as caught:
        wait_connected(producer, [broker], [], 0.5, "kafka output", "connect_timeout")
    assert time.monotonic() - started < 3
    assert str(caught.value).startswith(f"kafka output: cannot reach brokers {broker} within connect_timeout 0.5s")


def test_wait_connected_fails_at_once_on_an_authentication_error() -> None:
    broker = f"127.0.0.1:{closed_port()}"
    producer = Producer({"bootstrap.servers": broker, "log_level": 0})
    errors = [KafkaError(KafkaError._TRANSPORT), KafkaError(KafkaError._AUTHENTICATION, "bad password")]
    started = time.monotonic()
    with pytest.raises(KafkaClientError, match=f"kafka dlq: authentication failed with brokers {broker}: "
                                               "_AUTHENTICATION: bad password"):
        wait_connected(producer, [broker], errors, 30, "kafka dlq", "dlq.timeout")
    assert time.monotonic() - started < 1


class _Lines:
    """A structlog stand-in that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


def test_broker_wait_attempts_without_limit_and_logs_progress() -> None:
    broker = f"127.0.0.1:{closed_port()}"
    errors: list[KafkaError] = []
    client_errors = ClientErrors(RateLimitedLog(_Lines()), "fatal")  # type: ignore[arg-type]
    client_errors.opening = True
    client_errors.open_errors = errors
    producer = Producer({"bootstrap.servers": broker, "log_level": 0, "error_cb": client_errors})
    log = _Lines()
    wait = BrokerWait(producer, [broker], errors, log, "kafka output", log_every_s=0.0, attempt_s=0.2)
    assert [wait.attempt() for _ in range(3)] == [None, None, None]
    progress = [fields for level, event, fields in log.lines if event == "waiting for kafka brokers"]
    assert [p["attempt"] for p in progress] == [1, 2, 3] and all(p["brokers"] == broker for p in progress)
    assert progress[-1]["elapsed_s"] >= 0.3 and "_TRANSPORT" in progress[-1]["last_error"]
    assert errors == [], "each attempt consumes what the client reported"

    quiet = BrokerWait(producer, [broker], errors, log, "kafka output", log_every_s=60.0, attempt_s=0.1)
    log.lines.clear()
    quiet.attempt(), quiet.attempt()
    assert len(log.lines) == 1, "the first failed attempt logs, then once per log_every_s"

    errors.append(KafkaError(KafkaError._AUTHENTICATION, "bad password"))
    with pytest.raises(KafkaClientError, match="authentication failed"):
        quiet.attempt()


def test_client_errors_keep_the_first_fatal_collect_while_opening_then_warn() -> None:
    lines = _Lines()
    errors = ClientErrors(RateLimitedLog(lines), "producer failed fatally")  # type: ignore[arg-type]
    errors.opening = True
    for _ in range(MAX_OPEN_ERRORS + 5):
        errors(KafkaError(KafkaError._TRANSPORT, "down"))
    assert len(errors.open_errors) == MAX_OPEN_ERRORS and lines.lines == []
    errors.opening = False
    errors(KafkaError(KafkaError._TRANSPORT, "down"))
    errors(KafkaError(KafkaError._TRANSPORT, "down"))  # rate limited
    fatal = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    errors(fatal)
    errors(KafkaError(KafkaError._FATAL, "later", fatal=True))
    assert errors.fatal == "_FENCED: fenced"
    assert lines.lines == [("warning", "kafka client error", {"code": "_TRANSPORT", "reason": "down"}),
                           ("error", "producer failed fatally", {"code": "_FENCED", "reason": "fenced"})]


# ------------------------------------------------------------------------------------------- topics


def test_topic_names() -> None:
    assert topic_problem("cdc-events.v1_x") is None
    assert "not a valid" in topic_problem("..")
    assert "longer than 249" in topic_problem("t" * (TOPIC_MAX + 1))
    assert "only letters" in topic_problem("cdc events")


def test_templates_know_four_variables_and_must_give_legal_topics() -> None:
    assert template_problem("cdc.${schema}.${table}.${database}.${operation}") is None
    assert "${tabel}" in template_problem("cdc.${tabel}")
    assert topic_template_problem("cdc.${table}") is None
    assert "topic_template: " in topic_template_problem("cdc events.${table}")
    values = {"schema": "public", "table": "user orders", "operation": "INSERT"}
    assert template_topic("cdc.${schema}.${table}.${database}", values) == "cdc.public.user_orders."
    assert len(template_topic("${table}", {"table": "x" * 400})) == TOPIC_MAX
    assert uses_database(None, "p.${database}") and not uses_database("cdc.${table}", None)


def test_database_comes_from_the_envelope_metadata() -> None:
    assert database_of(b'{"metadata": {"database": "production"}}') == "production"
    assert database_of(b'{"metadata": {"database": 7}}') == "7"
    assert database_of(b'{"metadata": null}') == database_of(b"[1]") == database_of(b"not json") == ""


# -------------------------------------------------------------------------------------------- codec


@pytest.mark.parametrize(("codec", "level", "compression", "expected"), [
    (None, None, {"algorithm": "hybrid", "hybrid": {"large_algo": "zstd", "large_level": 7}},
     {"compression.type": "zstd", "compression.level": 7}),
    (None, None, {"algorithm": "zstd", "zstd": {"level": 19}}, {"compression.type": "zstd", "compression.level": 12}),
    (None, 2, {"algorithm": "lz4", "lz4": {"level": 9}}, {"compression.type": "lz4", "compression.level": 2}),
    (None, None, {"algorithm": "lz4", "enabled": False}, {"compression.type": "none"}),
    ("snappy", None, {"algorithm": "lz4"}, {"compression.type": "snappy"}),
    ("gzip", 6, {}, {"compression.type": "gzip", "compression.level": 6}),
])
def test_codec_settings(codec: str | None, level: int | None, compression: dict, expected: dict) -> None:
    profile = validated({"compression": compression}, hybrid, lz4, zstd, none)
    assert codec_settings(codec, level, profile) == expected


def test_profile_codec_without_a_profile_or_from_a_plain_dict() -> None:
    assert profile_codec(None) == ("none", None)

    class Plain:
        compression = {"algorithm": "hybrid"}
    assert profile_codec(Plain()) == ("zstd", 5)


# ----------------------------------------------------------------------------------- errors, delivery


def test_permanent_errors_are_rejected_the_rest_errored() -> None:
    for code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._UNKNOWN_PARTITION,
                 KafkaError.INVALID_RECORD):
        assert status_of(KafkaError(code)) is Status.REJECTED
    for code in (KafkaError._MSG_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError._TRANSPORT,
                 KafkaError._PURGE_QUEUE, KafkaError.NOT_LEADER_FOR_PARTITION):
        assert status_of(KafkaError(code)) is Status.ERRORED
    assert describe(Exception(KafkaError(KafkaError._TRANSPORT, "down"))) == "_TRANSPORT: down"
    assert describe(ValueError("plain")) == "plain"


class _Msg:
    def __init__(self, key: bytes = b"k", value: bytes = b"v") -> None:
        self._key, self._value = key, value

    def topic(self) -> str:
        return "t"

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


def test_batch_delivery_reports_once_when_the_last_record_reported() -> None:
    outcomes: list[Outcome] = []
    finished: list[bool] = []
    delivery = BatchDelivery(3, outcomes.append, ("max_request_size", 100), lambda: finished.append(True))
    for _ in range(3):
        delivery.report(None, _Msg())
    assert outcomes == [] and finished == [], "the producing code still holds its count"
    delivery.release()
    assert outcomes == [Outcome(Status.DELIVERED)] and finished == [True]
    delivery.release()
    assert len(outcomes) == 1


def test_batch_delivery_partial_and_whole_failures() -> None:
    outcomes: list[Outcome] = []
    keys, values = [b"a", b"b", b"c", b"d"], [b"0", b"1", b"2", b"3"]
    delivery = BatchDelivery(4, outcomes.append, ("max_request_size", 100), keys=keys, values=values)
    delivery.fail(1, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"), "t", 500)
    delivery.report(None, _Msg(b"c", b"2"))
    delivery.report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"), _Msg(b"d", b"3"))
    delivery.report(None, _Msg(b"a", b"0"))
    delivery.release()
    (outcome,) = outcomes
    assert outcome.status is Status.DELIVERED and outcome.failed == [1, 3]
    assert outcome.failed_status is Status.REJECTED
    assert "a record of 500 bytes exceeds max_request_size 100 (topic t) (1 event)" in outcome.reason

    outcomes.clear()
    delivery = BatchDelivery(3, outcomes.append, ("max_record_size", 100))
    delivery.fail_with(0, Status.REJECTED, "_INVALID_TOPIC", "no topic")
    delivery.fail_rest(range(0, 3), "_QUEUE_FULL", "full", [None, ("t", -1), ("t", -1)])
    delivery.release()
    assert outcomes == [Outcome(Status.ERRORED, reason="_QUEUE_FULL: full (2 events); _INVALID_TOPIC: no topic "
                                                       "(1 event)")]


def test_batch_delivery_matches_failed_reports_to_records_each_once() -> None:
    """One callback serves the whole batch: a failed report finds its record by key and value;
    equal records are matched one by one; a report matching no record fails the whole batch."""
    outcomes: list[Outcome] = []
    keys, values = ["k", "k", "k", ""], [b"same", b"same", b"other", b"x"]  # str keys go out as UTF-8
    delivery = BatchDelivery(4, outcomes.append, ("max_request_size", 100), keys=keys, values=values)
    timeout = KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")
    delivery.report(timeout, _Msg(b"k", b"same"))
    delivery.report(timeout, _Msg(None, b"x"))  # type: ignore[arg-type]  # an empty key comes back as None
    delivery.report(timeout, _Msg(b"k", b"same"))
    delivery.report(None, _Msg(b"k", b"other"))
    delivery.release()
    (outcome,) = outcomes
    assert outcome.failed == [0, 1, 3] and outcome.failed_status is Status.ERRORED

    outcomes.clear()
    delivery = BatchDelivery(2, outcomes.append, ("max_request_size", 100), keys=[b"a", b"b"], values=[b"1", b"2"])
    delivery.report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"), _Msg(b"zz", b"9"))
    delivery.report(None, _Msg(b"a", b"1"))
    delivery.release()
    (outcome,) = outcomes
    assert outcome.status is Status.ERRORED and not outcome.failed, "unmatched: the whole batch is retried"


def test_rate_limited_log_counts_what_it_suppressed(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[tuple[str, dict]] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            lines.append((event, fields))

    now = [1000.0]
    monkeypatch.setattr("savegress_gw.kafka.logs.time.monotonic", lambda: now[0])
    log = RateLimitedLog(Log())  # type: ignore[arg-type]
    for _ in range(3):
        log.emit("warning", "k", "broker down", code="_TRANSPORT")
    log.emit("warning", "other", "other line")
    now[0] += LOG_EVERY_S
    log.emit("warning", "k", "broker down", code="_TRANSPORT")
    assert lines == [("broker down", {"code": "_TRANSPORT"}), ("other line", {}),
                     ("broker down", {"code": "_TRANSPORT", "suppressed": 2})]



def test_settling_errors_are_those_of_a_moment_not_of_a_broken_setup() -> None:
    assert settling(KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)))
    assert settling(KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE)))
    assert not settling(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert not settling(ValueError("not a Kafka error"))


def test_the_dead_letter_store_asks_again_while_a_new_topic_has_no_partition_leader() -> None:
    """The CI failure it fixes: a worker booting right after creating the dead-letter topic got
    NOT_LEADER_FOR_PARTITION for its watermarks and halted the gateway."""
    class Settling:
        def __init__(self, failures: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
            self.failures, self.code, self.calls = failures, code, 0

        def get_watermark_offsets(self, partition: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
            self.calls += 1
            if self.calls <= self.failures:
                raise KafkaException(KafkaError(self.code))
            return (0, 7)

    store = TopicStore("gw.dlq", {"bootstrap.servers": "127.0.0.1:9"}, timeout_s=5)
    consumer = Settling(failures=3)
    assert store._watermarks(consumer, TopicPartition("gw.dlq", 0), time.monotonic() + 5) == (0, 7)
    assert consumer.calls == 4
    with pytest.raises(TopicStoreError, match=r"no offsets for gw.dlq\[0\].*NOT_LEADER"):
        store._watermarks(Settling(failures=100), TopicPartition("gw.dlq", 0), time.monotonic() + 0.3)
    denied = Settling(failures=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(TopicStoreError, match="AUTHORIZATION"):
        store._watermarks(denied, TopicPartition("gw.dlq", 0), time.monotonic() + 5)
    assert denied.calls == 1, "a permanent error is not asked again"
