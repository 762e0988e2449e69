"""Reaching a Kafka cluster: broker lists, SASL and TLS options, the librdkafka settings they make,
and waiting for the first answer with a bounded timeout.

Every Kafka component (sink, dead-letter topic, source) configures its connection with these
types, so a profile spells brokers, ``sasl`` and ``tls`` the same way everywhere. Waiting is
bounded (:func:`wait_connected`) or, where a profile asks for it, unbounded with progress in the
log (:class:`BrokerWait`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator

from savegress_gw.components import ComponentConfig
from savegress_gw.kafka.errors import KafkaClientError, describe
from savegress_gw.units import Duration

_BROKER = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\s:/,\[\]]+):(\d{1,5})$")
_E = KafkaError
OPEN_FAILS_FAST = frozenset({_E._AUTHENTICATION, _E._SSL,
                             getattr(_E, "SASL_AUTHENTICATION_FAILED", _E._AUTHENTICATION)})
"""Errors that end :func:`wait_connected` at once instead of waiting out the timeout."""
CALLBACK_KEYS = frozenset({"error_cb", "on_delivery", "logger", "stats_cb", "throttle_cb", "oauth_cb", "dr_cb",
                           "dr_msg_cb", "on_commit"})
"""librdkafka settings that are Python callbacks: the gateway sets them, a pass-through block may not."""
_ADMIN_PREFIXES = ("bootstrap.", "security.", "sasl.", "ssl.", "client.", "socket.", "broker.", "enable.ssl",
                   "reconnect.", "api.version", "metadata.")


def split_brokers(value: Any) -> Any:
    """``"a:1, b:2"`` → ``["a:1", "b:2"]``; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def check_brokers(brokers: list[str]) -> list[str]:
    """Every entry must be ``host:port`` (IPv6 hosts in brackets) with a port in 1..65535."""
    for broker in brokers:
        match = _BROKER.match(broker)
        if not match or not 0 < int(match[2]) < 65536:
            raise ValueError(f"broker {broker!r} must be host:port (e.g. kafka1:9092)")
    return brokers


Brokers = Annotated[list[str], BeforeValidator(split_brokers), AfterValidator(check_brokers)]
"""A ``brokers`` config field: a list of ``host:port``, or one comma-separated string."""


def no_callbacks(settings: dict[str, Any]) -> dict[str, Any]:
    """Validate a librdkafka pass-through block: refuse the keys in :data:`CALLBACK_KEYS`."""
    callbacks = sorted(set(settings) & CALLBACK_KEYS)
    if callbacks:
        raise ValueError(f"{callbacks[0]} is a callback the gateway sets itself")
    return settings


class SaslOptions(ComponentConfig):
    enabled: bool = True
    """Authenticate with SASL (on by default once the block is given)."""
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    """SASL mechanism."""
    username: str = ""
    """SASL user name (required when enabled)."""
    password: SecretStr = SecretStr("")
    """SASL password (required when enabled; use ``${KAFKA_PASSWORD}``, it is never logged)."""

    @model_validator(mode="after")
    def _credentials(self) -> "SaslOptions":
        if self.enabled and (not self.username or not self.password.get_secret_value()):
            raise ValueError("sasl needs username and password when enabled")
        return self


class TlsOptions(ComponentConfig):
    enabled: bool = True
    """Connect over TLS (on by default once the block is given); with ``sasl``: SASL_SSL."""
    ca_file: str | None = None
    """CA bundle (PEM) that verifies the brokers; default: the system's trust store."""
    cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS; needs ``key_file``."""
    key_file: str | None = None
    """Private key (PEM) of ``cert_file``."""
    skip_verify: bool = False
    """Accept any broker certificate and host name (testing only)."""

    @model_validator(mode="after")
    def _pair(self) -> "TlsOptions":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together")
        return self


class StartupOptions(ComponentConfig):
    wait: bool = False
    """``false``: starting fails when no broker answered within ``connect_timeout``. ``true``: the
    gateway starts anyway and waits for the brokers without a time limit, logging its progress;
    events wait (in the buffer, under backpressure) and stream as soon as a broker answers.
    Authentication and TLS failures end the wait at once either way."""
    log_interval: Duration = Field(10.0, gt=0)
    """While waiting, how often the warning ``waiting for kafka brokers`` (attempt, elapsed, brokers,
    last error) is logged."""


def client_settings(brokers: Sequence[str], client_id: str, sasl: SaslOptions | None,
                    tls: TlsOptions | None) -> dict[str, Any]:
    """librdkafka settings of a connection: bootstrap servers, client id, keepalive and security.

    ``security.protocol`` is PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL after which of ``sasl``
    and ``tls`` are given and enabled; the SASL password is in the result in clear text.
    """
    conf: dict[str, Any] = {"bootstrap.servers": ",".join(brokers), "client.id": client_id,
                            "socket.keepalive.enable": True}
    sasl_on, tls_on = bool(sasl and sasl.enabled), bool(tls and tls.enabled)
    conf["security.protocol"] = {(False, False): "PLAINTEXT", (True, False): "SASL_PLAINTEXT",
                                 (False, True): "SSL", (True, True): "SASL_SSL"}[(sasl_on, tls_on)]
    if sasl_on:
        assert sasl is not None
        conf.update({"sasl.mechanism": sasl.mechanism, "sasl.username": sasl.username,
                     "sasl.password": sasl.password.get_secret_value()})
    if tls_on:
        assert tls is not None
        for key, value in (("ssl.ca.location", tls.ca_file), ("ssl.certificate.location", tls.cert_file),
                           ("ssl.key.location", tls.key_file)):
            if value:
                conf[key] = value
        if tls.skip_verify:
            conf["enable.ssl.certificate.verification"] = False
            conf["ssl.endpoint.identification.algorithm"] = "none"
    return conf


def masked(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` with ``sasl.password`` replaced by ``***``, for logs and introspection."""
    return {key: ("***" if key == "sasl.password" else value) for key, value in conf.items()}


def admin_settings(conf: dict[str, Any]) -> dict[str, Any]:
    """The connection part of a producer or consumer configuration, for an AdminClient beside it."""
    return {key: value for key, value in conf.items() if key.startswith(_ADMIN_PREFIXES)}


def _fail_fast(errors: Sequence[KafkaError], joined: str, label: str) -> None:
    """Raise :class:`KafkaClientError` for the first error no waiting can fix (authentication, TLS, fatal)."""
    for err in errors:
        if err.code() in OPEN_FAILS_FAST or err.fatal():
            kind = "authentication failed" if err.code() != _E._SSL else "TLS handshake failed"
            raise KafkaClientError(f"{label}: {kind} with brokers {joined}: {err.name()}: {err.str()}")


def wait_connected(client: Producer, brokers: Sequence[str], errors: Sequence[KafkaError], timeout_s: float,
                   label: str, timeout_name: str) -> Any:
    """Cluster metadata from ``client`` as soon as a broker answers.

    ``errors`` is the list the client's ``error_cb`` appends to while opening. Raises
    :class:`KafkaClientError`, starting with ``label`` (``kafka output``) and naming the brokers:
    at once on an authentication, TLS or fatal error, else when ``timeout_s`` passed without an
    answer (naming ``timeout_name`` and the last error seen).
    """
    joined = ",".join(brokers)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        client.poll(0)
        _fail_fast(errors, joined, label)
        if errors:
            err = errors[-1]
            last = f"{err.name()}: {err.str()}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaClientError(f"{label}: cannot reach brokers {joined} within {timeout_name} {timeout_s:g}s "
                                   f"({last})")
        try:
            return client.list_topics(timeout=min(1.0, max(0.05, remaining)))
        except KafkaException as exc:
            if not errors:
                last = describe(exc)


class BrokerWait:
    """Waiting for a cluster without a time limit, one short attempt at a time, with progress in the log.

    Each :meth:`attempt` asks ``client`` for metadata for at most ``attempt_s`` and returns it once
    a broker answers, else None. ``errors`` is the list the client's ``error_cb`` appends to while
    connecting; an attempt consumes it: an authentication, TLS or fatal error raises
    :class:`KafkaClientError` (no waiting fixes those), the newest other one becomes the last error.
    Every ``log_every_s`` (and at the first failed attempt) ``log`` gets the warning ``waiting for
    kafka brokers`` with ``attempt``, ``elapsed_s``, ``brokers`` and ``last_error``.
    """

    def __init__(self, client: Producer, brokers: Sequence[str], errors: list[KafkaError], log: Any, label: str,
                 log_every_s: float, attempt_s: float = 1.0) -> None:
        self.client, self.errors, self.log, self.label = client, errors, log, label
        self.brokers = ",".join(brokers)
        self.log_every_s, self.attempt_s = log_every_s, attempt_s
        self.attempts = 0
        self.started = time.monotonic()
        self.last_error = "no answer yet"
        self._client_reported = False  # the client's own errors name the cause better than a metadata timeout
        self._logged_at: float | None = None

    @property
    def elapsed_s(self) -> float:
        """Seconds since the wait began."""
        return time.monotonic() - self.started

    def attempt(self) -> Any | None:
        """Metadata if a broker answered within ``attempt_s``, else None (after logging progress when due)."""
        self.attempts += 1
        self.client.poll(0)
        self._take_errors()
        try:
            metadata = self.client.list_topics(timeout=self.attempt_s)
        except KafkaException as exc:
            self._take_errors()
            if not self._client_reported:
                self.last_error = describe(exc)
            now = time.monotonic()
            if self._logged_at is None or now - self._logged_at >= self.log_every_s:
                self._logged_at = now
                self.log.warning("waiting for kafka brokers", attempt=self.attempts,
                                 elapsed_s=round(now - self.started, 1), brokers=self.brokers,
                                 last_error=self.last_error)
            return None
        self._take_errors()
        return metadata

    def _take_errors(self) -> None:
        """Judge and clear the errors the client reported since the last call."""
        errors = self.errors
        if not errors:
            return
        _fail_fast(errors, self.brokers, self.label)
        err = errors[-1]
        self.last_error = f"{err.name()}: {err.str()}"
        self._client_reported = True
        errors.clear()
