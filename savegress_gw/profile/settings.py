"""The core sections of a profile: everything that is not chosen through a plugin.

Field names and defaults follow the user's guide and ``spec/reference.md``. A key whose feature
is not built yet is still known by name: setting it is refused with ``not implemented yet``
rather than silently ignored (see :func:`not_yet`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from savegress_gw.units import Duration, Size


class Section(BaseModel):
    """Base of every profile section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _refuse_unless_off(feature: str):
    def check(value: Any) -> Any:
        if value in (None, False, {}, {"enabled": False}):
            return value
        raise PydanticCustomError("not_implemented", "not implemented yet ({feature})", {"feature": feature})
    return check


def not_yet(feature: str) -> Any:
    """A key that is part of the configuration surface but whose feature is not built yet.

    Leaving it out, or setting ``{enabled: false}``, is fine; any other value is refused with
    ``not implemented yet: <key path> (<feature>)``.
    """
    return Annotated[
        Any,
        AfterValidator(_refuse_unless_off(feature)),
        WithJsonSchema({"description": f"not implemented yet: {feature}"}),
    ]


# Keys of the configuration surface whose features are not built yet.
LogRotationLater = not_yet("log rotation")
CompressorPoolsLater = not_yet("compressor pools; compression runs in every worker process")
PerTableCompressionLater = not_yet("per-table compression")


# --------------------------------------------------------------------------------------- gateway


class GatewaySettings(Section):
    """How the gateway runs its processes (savegress-gw's own block)."""

    id: str = "savegress-gw"
    """Name of this gateway: prefixes process titles, transactional ids and state directories."""
    workers: int = Field(1, ge=1, le=64)
    """Worker processes that run the pipeline (batch, compress, rate limit, send)."""
    heartbeat_timeout: Duration = 60.0
    """A child whose work loop has not written its heartbeat for this long is killed and replaced
    (it must exceed the longest a sink may block in one send, e.g. webhook timeouts)."""
    graceful_timeout: Duration = 30.0
    """On SIGTERM/SIGINT, how long in-flight batches may take to settle before children are killed."""
    boot_timeout: Duration = 60.0
    """How long a child may take to open its components before the gateway halts."""
    ring_size: Size | None = None
    """Bytes of each worker's shared-memory ring; default from ``buffer.pool`` or 32MB."""


# -------------------------------------------------------------------------------------- batching


class AdaptiveBatching(Section):
    min_size: int = Field(10, ge=1)
    """Smallest batch the adaptive batcher shrinks to."""
    max_size: int = Field(1000, ge=1)
    """Largest batch the adaptive batcher grows to."""
    target_latency: Duration = 0.05
    """Delivery latency the batcher steers toward."""
    adjustment_interval: Duration = 1.0
    """How often the batch size is re-tuned."""


class BatchingSettings(Section):
    enabled: bool = True
    """Off: every event is sent on its own (``max_size`` 1)."""
    mode: Literal["size", "time"] = "size"
    """``size``: flush at ``max_size`` or after ``max_wait``; ``time``: flush every ``interval``."""
    max_size: int = Field(100, ge=1, le=100_000)
    """Most events in one batch."""
    max_wait: Duration = 0.1
    """Longest time the first event of a batch waits for the batch to fill."""
    interval: Duration = 300.0
    """Flush period in ``mode: time``."""
    adaptive: bool = False
    """Move the batch size within ``adaptive_config`` bounds toward ``target_latency``."""
    adaptive_config: AdaptiveBatching = AdaptiveBatching()
    target_latency: Duration | None = None
    """Shorthand for ``adaptive_config.target_latency``."""
    target_throughput: int | None = Field(None, ge=1)
    """Events/s the adaptive batcher aims for: it keeps growing batches while below it."""


# ---------------------------------------------------------------------------------------- buffer


class BufferPool(Section):
    enabled: bool = True
    initial_size: int = Field(16, ge=1)
    max_size: int = Field(64, ge=1)
    """With ``prealloc_size``: bytes of shared-memory ring per worker = max_size × prealloc_size."""
    prealloc_size: Size = 64 * 1024


OverflowPolicy = Literal["drop_oldest", "drop_newest", "block", "buffer"]


class BufferOverflow(Section):
    enabled: bool = True
    """With ``enabled: true`` written out and no ``policy``, the policy is ``buffer`` (spill)."""
    policy: OverflowPolicy | None = None
    """What happens when the buffer is full: ``block``, ``drop_oldest``, ``drop_newest`` or
    ``buffer`` (spill to disk under ``path``)."""
    path: str = "./data/overflow"
    """Directory of the spill segments."""
    max_size: Size = 1024**3
    """Most bytes the spill may hold; past it the source is paused."""
    compression: bool = True
    """lz4-compress spilled frames."""


class BufferSettings(Section):
    type: Literal["ring"] = "ring"
    """In-memory buffer kind (a shared-memory ring per worker)."""
    size: int = Field(8192, ge=16)
    """Events buffered between the source and the sink; utilization = buffered / size."""
    pool: BufferPool = BufferPool()
    overflow: BufferOverflow = BufferOverflow()
    overflow_policy: OverflowPolicy | None = None
    """Flat alias of ``overflow.policy``."""

    @property
    def policy(self) -> OverflowPolicy:
        """The effective overflow policy: as set, ``buffer`` for a bare ``overflow.enabled: true``,
        else ``block``."""
        explicit = self.overflow.policy or self.overflow_policy
        if explicit:
            return explicit
        spill = self.overflow.enabled and "enabled" in self.overflow.model_fields_set
        return "buffer" if spill else "block"


class PrioritySettings(Section):
    enabled: bool = False
    """Hand events of the listed tables to the workers first when the rings are full (4 : 2 : 1)."""
    high_priority_tables: list[str] = []
    """Table patterns (``schema.table``, ``*`` wildcards, bare names match any schema)."""
    medium_priority_tables: list[str] = []


class ParallelSettings(Section):
    table_parallelism: int = Field(8, ge=1, le=1024)
    """Lanes: events are spread over lanes by table and primary key (order holds per key)."""
    transaction_parallelism: int | None = Field(None, ge=1, le=4096)
    """Sends (batches) each worker keeps in flight to the sink at once, each the destination's unit of
    commit: a batch of Kafka records awaiting their acknowledgements, a webhook request. Unset: as many
    as the buffer holds. With ``exactly_once`` each worker commits one Kafka transaction at a time."""
    priority: PrioritySettings = PrioritySettings()


# ---------------------------------------------------------------------------- reliability basics


class RetrySettings(Section):
    enabled: bool = True
    max_attempts: int = Field(5, ge=1)
    """Attempts per batch before its events go to the dead-letter queue (without one: retry forever)."""
    initial_delay: Duration = 0.1
    max_delay: Duration = 30.0
    multiplier: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.1, ge=0.0, le=1.0)
    """Each delay is randomized by ± this fraction."""


class AdaptiveBreaker(Section):
    enabled: bool = True
    """Also open on the error rate, not only on consecutive failures."""
    min_samples: int = Field(100, ge=1)
    """Sends the error rate is measured over (the last N)."""
    error_rate_threshold: float = Field(0.5, gt=0.0, le=1.0)
    """Failed fraction of the last ``min_samples`` sends that opens the breaker."""


class CircuitBreakerSettings(Section):
    enabled: bool = True
    failure_threshold: int = Field(5, ge=1)
    """Consecutive failed sends that open the breaker."""
    success_threshold: int = Field(3, ge=1)
    """Successful probes in half-open state that close it."""
    timeout: Duration = 30.0
    """How long the breaker stays open before probing."""
    half_open_requests: int = Field(3, ge=1)
    """Probe sends allowed in flight while half-open."""
    adaptive: AdaptiveBreaker = AdaptiveBreaker()


class ReplicationSettings(Section):
    ack_mode: Literal["none", "leader", "all"] = "leader"
    """What counts as delivered: Kafka acks 0/1/all; for the file sink none/flush/fsync."""
    min_isr: int | None = Field(None, ge=1)
    """Kafka ``min.insync.replicas`` for topics the gateway creates."""


class ExactlyOnceSettings(Section):
    """``exactly_once``: Kafka transactions per worker, source positions committed with the data.

    An absent block, or ``enabled: false``, means at-least-once. ``spec/reference.md`` lists
    ``enabled: true`` as the Enterprise default; here the block must say so.
    """

    enabled: bool = False
    transaction_timeout: Duration = Field(60.0, ge=1.0, le=900.0)
    """librdkafka ``transaction.timeout.ms``: the coordinator aborts (and fences) a transaction
    that stays open longer; must not exceed the brokers' ``transaction.max.timeout.ms`` (15 min)."""
    idempotent_producer: bool = True
    """Transactions imply an idempotent producer; ``false`` is refused together with ``enabled``."""


class CheckpointSettings(Section):
    enabled: bool = True
    type: Literal["file", "memory"] = "file"
    """``memory`` keeps positions only for the life of the process (tests)."""
    dir: str = "./data/checkpoints"
    path: str | None = None
    """PORTAL spelling of ``dir``."""
    interval: Duration = 10.0
    sync_mode: Literal["async", "sync"] = "async"
    """``sync``: fsync after every checkpoint write."""

    @property
    def directory(self) -> str:
        return self.path or self.dir


# ---------------------------------------------------------------------------------- observability


class LoggingSettings(Section):
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    output: str = "stderr"
    """``stdout``, ``stderr`` or a file path."""
    rotation: LogRotationLater = None


class PrometheusSettings(Section):
    enabled: bool = True
    path: str | None = None
    namespace: str = "savegress"
    port: int | None = Field(None, ge=1, le=65535)


class MetricsSettings(Section):
    enabled: bool = True
    address: str = "127.0.0.1:8081"
    """``host:port`` of /metrics and /health (``:8081`` means all interfaces)."""
    path: str = "/metrics"
    labels: dict[str, str] = {}
    """Constant labels added to every metric."""
    prometheus: PrometheusSettings = PrometheusSettings()


# ------------------------------------------------------------- bases of plugin-selected sections


class SourceSection(Section):
    """Keys every source has: which tables and columns pass the source process's filters."""

    tables: list[str] = []
    """Include list, ``schema.table`` with ``*`` wildcards; empty = every table."""
    exclude_tables: list[str] = []
    """Exclude list, ``schema.table`` with ``*`` wildcards; wins over ``tables``."""
    columns: dict[str, list[str]] = {}
    """Per table: column names or patterns to keep, ``"*"`` for all, ``"!pattern"`` to drop."""


class OutputSection(Section):
    """Keys every output has (the selected sink's own keys are added to these)."""


class SimdSettings(Section):
    enabled: bool = True
    """Accepted for compatibility: liblz4 and libzstd pick their fastest code path at run time."""
    instruction_set: Literal["auto", "avx2", "avx512", "neon"] = "auto"


class CompressionSection(Section):
    enabled: bool = True
    """Off: everything the gateway writes itself is left uncompressed."""
    min_size: Size = 256
    """Payloads smaller than this are written uncompressed."""
    simd: SimdSettings = SimdSettings()
    pool: CompressorPoolsLater = None
    exclude_tables: PerTableCompressionLater = None


class RateLimitingSection(Section):
    enabled: bool = True
    """Off: no rate limit."""


class BackpressureSection(Section):
    enabled: bool = True
    """Off: the source is never paused by utilization; a full buffer still blocks it."""
    high_watermark: float = Field(0.8, gt=0.0, le=1.0)
    """Buffer utilization at which backpressure engages."""
    low_watermark: float = Field(0.4, ge=0.0, lt=1.0)
    """Buffer utilization at which it releases (hysteresis)."""

    @model_validator(mode="after")
    def _low_below_high(self) -> "BackpressureSection":
        if self.low_watermark >= self.high_watermark:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) must be below high_watermark ({self.high_watermark})"
            )
        return self


class DlqSection(Section):
    """Keys every dead-letter queue has: when an event is parked instead of retried."""

    enabled: bool = True
    """Off: rejected events are dropped and counted, failing sends are retried forever."""
    max_retries: int | None = Field(None, ge=0)
    """Retries after the first attempt before events are parked (default: ``retry.max_attempts`` - 1)."""
    retry_delay: Duration | None = None
    """First retry delay before parking (default: ``retry.initial_delay``)."""
    exponential_backoff: bool | None = None
    """Double the delay on each retry (default: ``retry.multiplier`` applies)."""
    max_retry_delay: Duration | None = None
    """Cap of the retry delay (default: ``retry.max_delay``)."""
    preserve_order: bool = False
    """Hold later events of a key behind its parked event: they are parked too, until the queue
    holds no entry of the key any more (replayed or purged; :mod:`savegress_gw.deadletter.holds`)."""

    def retry_settings(self, retry: RetrySettings) -> RetrySettings:
        """``retry`` with this section's explicit keys applied: the policy that decides parking."""
        changes: dict[str, Any] = {}
        if self.max_retries is not None:
            changes["max_attempts"] = self.max_retries + 1
        if self.retry_delay is not None:
            changes["initial_delay"] = self.retry_delay
        if self.exponential_backoff is not None:
            changes["multiplier"] = 2.0 if self.exponential_backoff else 1.0
        if self.max_retry_delay is not None:
            changes["max_delay"] = self.max_retry_delay
        return retry.model_copy(update=changes)
