"""Which librdkafka errors no retry can fix, and the error the Kafka helpers raise.

A delivery error is *permanent* when sending the same record again can only fail the same way
(too large, malformed, not authorized, no such partition): its events are REJECTED and go to the
dead-letter queue. Every other error (timeouts, lost leaders, too few in-sync replicas, a broken
connection) is *retriable*: ERRORED, and the pipeline retries with backoff.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from savegress_gw.components import Status
from savegress_gw.errors import GatewayError

_E = KafkaError
REJECTED_CODES = frozenset(code for code in (
    getattr(_E, "MSG_SIZE_TOO_LARGE", None), getattr(_E, "_MSG_SIZE_TOO_LARGE", None),
    getattr(_E, "INVALID_RECORD", None), getattr(_E, "TOPIC_AUTHORIZATION_FAILED", None),
    getattr(_E, "TOPIC_EXCEPTION", None), getattr(_E, "INVALID_TOPIC_EXCEPTION", None),
    getattr(_E, "RECORD_LIST_TOO_LARGE", None), getattr(_E, "UNSUPPORTED_FOR_MESSAGE_FORMAT", None),
    getattr(_E, "POLICY_VIOLATION", None), getattr(_E, "_INVALID_ARG", None), getattr(_E, "_UNKNOWN_PARTITION", None),
    getattr(_E, "_KEY_SERIALIZATION", None), getattr(_E, "_VALUE_SERIALIZATION", None),
) if code is not None)
"""Delivery errors that no retry can fix: the events are REJECTED. Every other error is ERRORED (retried)."""


_SETTLING_CODES = frozenset({_E.NOT_LEADER_FOR_PARTITION, _E.LEADER_NOT_AVAILABLE, _E.UNKNOWN_TOPIC_OR_PART})


def settling(exc: BaseException) -> bool:
    """True for an error worth asking again shortly: retriable, or one of a topic created a moment
    ago whose partitions have no leader everywhere yet (NOT_LEADER_FOR_PARTITION and the like)."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and (err.retriable() or err.code() in _SETTLING_CODES)


class KafkaClientError(GatewayError):
    """A Kafka client could not start or set up its topic: brokers unreachable, authentication or
    TLS failed, a topic missing or not creatable. The message names the brokers or the topic."""


def status_of(err: KafkaError) -> Status:
    """REJECTED for a permanent error (:data:`REJECTED_CODES`), else ERRORED."""
    return Status.REJECTED if err.code() in REJECTED_CODES else Status.ERRORED


def describe(exc: BaseException) -> str:
    """``NAME: message`` for a KafkaException (or anything carrying a KafkaError), else ``str(exc)``."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return f"{err.name()}: {err.str()}"
    return str(exc)
