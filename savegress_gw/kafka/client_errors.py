"""librdkafka's ``error_cb`` for one client, the same for every Kafka component.

librdkafka reports client-level errors (a broker down, all brokers down, authentication, a fatal
idempotence error) through ``error_cb``, served by the client's ``poll``. Every component
classifies them alike: a fatal error is remembered and logged once, errors while the client is
still connecting are collected for :func:`~savegress_gw.kafka.connection.wait_connected` (or a
:class:`~savegress_gw.kafka.connection.BrokerWait`) to judge, anything else is a rate-limited
warning.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from savegress_gw.kafka.logs import RateLimitedLog

MAX_OPEN_ERRORS = 100
"""Errors kept while connecting (the first ones; a broker that is down repeats itself)."""


class ClientErrors:
    """The ``error_cb`` of one librdkafka client (pass the instance itself as ``error_cb``).

    * A fatal error (``err.fatal()``) is kept in :attr:`fatal` as ``NAME: message`` (the first
      one only) and logged once at error level as ``fatal_event``; what follows (purge and
      restart, a new producer) is the component's decision.
    * While :attr:`opening` is true, every error is appended to :attr:`open_errors` (at most
      :data:`MAX_OPEN_ERRORS`) and nothing but a fatal error is logged.
    * Otherwise a non-fatal error is logged as the warning ``kafka client error`` with its code
      and reason, rate limited per error code (:class:`~savegress_gw.kafka.logs.RateLimitedLog`).

    One instance belongs to one client: a component that replaces its producer makes a new one.
    """

    def __init__(self, log: RateLimitedLog, fatal_event: str) -> None:
        self.log = log
        self.fatal_event = fatal_event
        self.fatal: str | None = None
        """``NAME: message`` of the first fatal error, or None."""
        self.opening = False
        """True while the client connects: errors are collected, not logged."""
        self.open_errors: list[KafkaError] = []
        """Errors seen while :attr:`opening` (the component clears the list when it starts to open)."""

    def __call__(self, err: KafkaError) -> None:
        fatal = err.fatal()
        if fatal and self.fatal is None:
            self.fatal = f"{err.name()}: {err.str()}"
            self.log.log.error(self.fatal_event, code=err.name(), reason=err.str())
        if self.opening:
            if len(self.open_errors) < MAX_OPEN_ERRORS:
                self.open_errors.append(err)
        elif not fatal:
            self.log.emit("warning", ("error", err.code()), "kafka client error", code=err.name(), reason=err.str())
