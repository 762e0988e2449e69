"""Kafka topics: legal names, per-event templates (``cdc.${schema}.${table}``) and on-demand creation."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import AfterValidator, Field, field_validator

from savegress_gw.components import ComponentConfig
from savegress_gw.kafka.errors import KafkaClientError, describe

TEMPLATE_VARIABLES = ("schema", "table", "database", "operation")
"""What ``topic_template`` and ``partition_key`` may use, expanded per event."""
TEMPLATE_VAR = re.compile(r"\$\{([^}]*)\}")
_TOPIC_ILLEGAL = re.compile(r"[^a-zA-Z0-9._-]")
TOPIC_MAX = 249
"""Longest legal topic name."""


def topic_problem(name: str) -> str | None:
    """Why ``name`` is not a legal Kafka topic name, or None."""
    if not name or name in (".", ".."):
        return f"{name!r} is not a valid Kafka topic name"
    if len(name) > TOPIC_MAX:
        return f"topic name {name[:40]!r}... is longer than {TOPIC_MAX} characters"
    if _TOPIC_ILLEGAL.search(name):
        return f"topic name {name!r} may hold only letters, digits, '.', '_' and '-'"
    return None


def _legal_topic(name: str) -> str:
    if problem := topic_problem(name):
        raise ValueError(problem)
    return name


TopicName = Annotated[str, AfterValidator(_legal_topic)]
"""A config field holding a Kafka topic name, checked when the profile is validated."""


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a valid template (a variable outside :data:`TEMPLATE_VARIABLES`), or None."""
    unknown = [name for name in TEMPLATE_VAR.findall(template) if name not in TEMPLATE_VARIABLES]
    if unknown:
        known = ", ".join(f"${{{name}}}" for name in TEMPLATE_VARIABLES)
        return f"unknown template variable ${{{unknown[0]}}} in {template!r} (known: {known})"
    return None


def topic_template_problem(template: str) -> str | None:
    """Why ``template`` cannot give topic names: unknown variables, or illegal text around them."""
    if problem := template_problem(template):
        return problem
    if problem := topic_problem(TEMPLATE_VAR.sub("x", template)):
        return f"topic_template: {problem}"
    return None


def expand(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``${name}`` replaced by ``values[name]`` (missing: empty)."""
    return TEMPLATE_VAR.sub(lambda m: values.get(m.group(1), ""), template)


def template_topic(template: str, values: dict[str, str]) -> str:
    """The topic ``template`` gives for ``values``: characters Kafka does not allow become ``_``, cut
    to :data:`TOPIC_MAX`. The result may still be illegal (empty, ``.``); check :func:`topic_problem`."""
    return _TOPIC_ILLEGAL.sub("_", expand(template, values))[:TOPIC_MAX]


def uses_database(*templates: str | None) -> bool:
    """Whether any template uses ``${database}`` (read from the payload, so only when needed)."""
    return any(template and "${database}" in template for template in templates)


def database_of(payload: bytes) -> str:
    """``metadata.database`` of an envelope, or empty."""
    try:
        metadata = orjson.loads(payload).get("metadata")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    database = metadata.get("database") if isinstance(metadata, dict) else None
    return str(database) if database is not None else ""


class TopicOptions(ComponentConfig):
    create: bool = True
    """Create missing topics with the settings below: ``topic`` in ``open()``, each templated topic
    before its first record. ``false``: the gateway never creates topics (broker auto-creation is
    switched off for its producer too) and ``open()`` fails when ``topic`` does not exist."""
    partitions: int = Field(6, ge=1)
    """Partitions of the topics the gateway creates."""
    replication_factor: int = Field(-1, ge=-1)
    """Replication factor of the topics the gateway creates; -1 = the broker's ``default.replication.factor``.
    ``replication.min_isr`` becomes their ``min.insync.replicas``."""

    @field_validator("replication_factor")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("replication_factor must be -1 (broker default) or at least 1")
        return value


def create_topic(admin: AdminClient, topic: str, options: TopicOptions, settings: dict[str, str],
                 timeout_s: float, label: str) -> bool:
    """Create ``topic`` with ``options``' partitions and replication factor and the topic-level
    ``settings`` (``min.insync.replicas``, ``max.message.bytes``, ...).

    True when created, False when it already existed (its settings are then left as they are).
    Raises :class:`KafkaClientError` starting with ``label`` and naming the topic, the settings
    and the broker's error; the whole call takes at most about ``timeout_s`` + 5 s.
    """
    new = NewTopic(topic, num_partitions=options.partitions, replication_factor=options.replication_factor,
                   config=settings)
    try:
        try:
            future = admin.create_topics([new], request_timeout=timeout_s, operation_timeout=timeout_s)[topic]
            future.result(timeout=timeout_s + 5)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            extra = "".join(f", {key}={value}" for key, value in settings.items())
            raise KafkaClientError(f"{label}: could not create topic {topic!r} (partitions {options.partitions}, "
                                   f"replication factor {options.replication_factor}{extra}): {describe(exc)}"
                                   ) from None
        except Exception as exc:  # a timed-out future
            raise KafkaClientError(f"{label}: could not create topic {topic!r}: {type(exc).__name__}: {exc}") from None
    finally:
        admin.poll(0)  # serve its log lines
    return True


def partition_count(client: Any, topic: str, timeout_s: float = 5.0) -> int | None:
    """Partitions of ``topic`` from ``client``'s metadata (a Producer or AdminClient); None when unknown."""
    try:
        metadata = client.list_topics(topic, timeout=timeout_s)
    except KafkaException:
        return None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return None
    return len(found.partitions)
