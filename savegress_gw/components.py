"""The component contract: six kinds, one base class each, and the data they exchange.

Every source, compressor, limiter, backpressure strategy, dead-letter queue and sink is a
*component*: a small class with a pydantic ``Config``, a cheap ``__init__(config)`` that does no
I/O, ``open(context)`` in the process that uses it, and an idempotent ``close()`` that flushes.

Hot paths work on batches: a :class:`Batch` holds the events of one run in columns (payloads,
keys, tables, ...), so a sink writes thousands of events with a handful of Python calls.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from savegress_gw.metrics import ProcessMetrics
    from savegress_gw.shared import SharedBlock

KINDS = ("source", "compressor", "limiter", "backpressure", "dlq", "sink")
"""The component kinds, in pipeline order (the dead-letter queue sits beside the sink)."""


class ComponentConfig(BaseModel):
    """Base of every component's ``Config``: unknown keys are errors, values are immutable.

    Field docstrings become the descriptions in ``savegress-gw schema``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


@dataclass
class Context:
    """What a component receives in ``open()``: where it runs and what it may share.

    Only plain data and shared-memory handles cross process boundaries, so a context is built
    in the process that opens the component.
    """

    process: str
    """``"source"`` or ``"worker-<i>"``: the process the component lives in."""
    worker_index: int
    """The worker's index, or -1 in the source process."""
    log: "FilteringBoundLogger"
    """A structlog logger bound to the process and component."""
    profile: Any = None
    """The validated profile (read-only), for settings outside the component's own section."""
    shared: "SharedBlock | None" = None
    """Float64 slots in shared memory plus a lock, when the component class asks for ``shared_slots``."""
    compressor: "Compressor | None" = None
    """The profile's gateway compressor, for sinks that write compressed data themselves."""
    metrics: "ProcessMetrics | None" = None
    """This process's row of the shared metrics, for components that report gauges of their own
    (set in the source process; write per batch, never per event)."""


class Component(abc.ABC):
    """Base of the six kinds. Subclasses set ``name`` (the value that selects them in a profile)."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    shared_slots: ClassVar[int] = 0
    """Float64 slots of shared memory this component needs across processes (0 = none)."""

    def __init__(self, config: ComponentConfig) -> None:
        self.config = config

    @classmethod
    def check_profile(cls, config: ComponentConfig, profile: Any) -> list[str]:
        """Problems of this component's settings together with the rest of ``profile``.

        Called during validation (``savegress-gw validate`` and at start) for selected components;
        each problem is a ``key.path: message`` string. Default: none.
        """
        return []

    def open(self, context: Context) -> None:
        """Acquire resources (files, sockets, clients). Called once, in the process that uses it."""

    def close(self) -> None:
        """Flush and release resources. Must be idempotent."""


# ---------------------------------------------------------------------------------------------
# Data exchanged between components


@dataclass(slots=True)
class Batch:
    """A run of encoded events, stored as columns of equal length.

    ``payloads`` are the JSON envelopes exactly as sinks write them; the other columns carry what
    sinks route and key by, so no sink has to parse a payload on the hot path.
    """

    payloads: list[bytes]
    """The canonical JSON envelope of each event."""
    keys: list[str]
    """The message key, ``table:pk`` (composite primary keys joined with ``:``)."""
    ids: list[str]
    operations: list[str]
    schemas: list[str]
    tables: list[str]
    timestamps_ms: list[int]
    """Event time (the envelope's ``timestamp``) in Unix milliseconds."""
    ingest_ns: list[int]
    """When the gateway read each event (``time.time_ns()``), for end-to-end latency."""

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "payloads", "keys", "ids", "operations", "schemas", "tables", "timestamps_ms", "ingest_ns",
    )
    REPEATABLE: ClassVar[frozenset[str]] = frozenset(
        {"operations", "schemas", "tables", "timestamps_ms", "ingest_ns"})
    """Columns that often hold one value for a whole frame, framed compactly then (:meth:`to_columns`)."""
    _FRAMING: ClassVar[tuple[tuple[str, bool], ...]] = tuple(zip(COLUMNS, map(REPEATABLE.__contains__, COLUMNS)))

    def __len__(self) -> int:
        return len(self.payloads)

    @classmethod
    def empty(cls) -> "Batch":
        return cls([], [], [], [], [], [], [], [])

    def slice(self, start: int, stop: int) -> "Batch":
        """The events ``start..stop`` as a new batch (columns are copied, events are not)."""
        return Batch(*(getattr(self, c)[start:stop] for c in self.COLUMNS))

    def take(self, indices: list[int]) -> "Batch":
        """The events at ``indices`` (in that order) as a new batch."""
        return Batch(*([getattr(self, c)[i] for i in indices] for c in self.COLUMNS))

    def extend(self, other: "Batch") -> None:
        """Append ``other``'s events to this batch."""
        for column in self.COLUMNS:
            getattr(self, column).extend(getattr(other, column))

    def to_columns(self) -> list[Any]:
        """The columns for msgpack framing, in :attr:`COLUMNS` order: lists, except that one of
        :attr:`REPEATABLE` holding a single value throughout (a read's ingest time, a transaction's
        table and timestamp) is ``{"repeat": value, "times": len(batch)}``. That costs one
        ``list.count`` in C to find and saves encoding and decoding an object per event."""
        columns: list[Any] = []
        for name, repeatable in self._FRAMING:
            values = getattr(self, name)
            if repeatable and len(values) > 1 and values[0] == values[-1] and \
                    values.count(values[0]) == len(values):
                columns.append({"repeat": values[0], "times": len(values)})
            else:
                columns.append(values)
        return columns

    @classmethod
    def from_columns(cls, columns: list[Any]) -> "Batch":
        """The batch :meth:`to_columns` described (plain lists of every column are accepted too)."""
        return cls(*[[column["repeat"]] * column["times"] if type(column) is dict else column
                     for column in columns])


@dataclass(slots=True)
class SourceBatch:
    """What a source read: events as envelope dicts, and the position after the last of them.

    ``position`` is opaque to the core (an LSN, a file offset, a request sequence) and must be
    plain data (JSON and msgpack encodable); it is handed back to ``Source.commit`` once every
    event up to it has been delivered or parked in the dead-letter queue.
    """

    events: list[dict[str, Any]]
    position: Any = None
    encoded: "Batch | None" = None
    """A trusted source's events already encoded as columns (then ``events`` is empty): the fast
    path for sources that can write the canonical JSON envelope themselves."""

    def __len__(self) -> int:
        return len(self.encoded) if self.encoded is not None else len(self.events)


class Status(enum.Enum):
    """How a sink ended a send, following Vector's delivery states."""

    DELIVERED = "delivered"
    """Durably accepted by the destination."""
    ERRORED = "errored"
    """A transient failure: the pipeline retries with backoff."""
    REJECTED = "rejected"
    """The destination will never accept these events: they go to the dead-letter queue."""


@dataclass(slots=True)
class Outcome:
    """The result of one ``Sink.send`` call.

    ``failed`` lists the indices (in the sent batch) that did not make it; empty means the status
    applies to the whole batch. With ``DELIVERED`` and a non-empty ``failed``, the listed events
    failed with ``failed_status`` and the rest were delivered.
    """

    status: Status
    reason: str = ""
    failed: list[int] = field(default_factory=list)
    failed_status: Status = Status.ERRORED
    retry_after_s: float | None = None
    """A destination's own hint (``Retry-After``, throttle time) for when to try again."""


@dataclass(slots=True)
class Compressed:
    """A compressed payload and the encoding actually used (``identity`` when left as is)."""

    data: bytes
    encoding: str


# ---------------------------------------------------------------------------------------------
# The six kinds


class Source(Component):
    """Reads events from the outside world, in the source process.

    Contract: ``read`` returns events in source order with non-decreasing positions; the core
    calls ``commit(position)`` only when every event up to that position has been delivered or
    parked, and calls ``commit`` with positions in the order ``read`` returned them.
    """

    kind = "source"
    trusted: ClassVar[bool] = False
    """True when ``read`` already returns normalized envelopes, so the core skips ``normalize``."""

    @abc.abstractmethod
    def read(self, max_events: int, timeout_s: float) -> SourceBatch | None:
        """Return up to ``max_events`` events, waiting at most ``timeout_s``; ``None`` if none came."""

    resumable: ClassVar[bool] = False
    """True when :meth:`seek` works, so the core checkpoints this source's positions."""
    replays_in_order: ClassVar[bool] = False
    """True when ``seek(position)`` reads again exactly the events that followed ``position``, in the
    same order (a file, a WAL, a seeded generator): exactly-once then numbers events in read order."""
    sequence_lanes: ClassVar[bool] = False
    """True for a source of several ordered streams (Kafka partitions) that numbers its events
    itself: :meth:`event_sequence` gives each event's ``(lane, ordinal)``, ordinals growing along a
    lane and the same when the event is read again, and every position is ``{lane: ordinal of the
    last event read}`` (so ``seek({lane: n})`` continues each lane after ``n``). Exactly-once needs
    this or :attr:`replays_in_order`."""

    def seek(self, position: Any) -> None:
        """Continue after ``position`` (a value ``read`` returned earlier, from the checkpoint).

        Called once, after ``open`` and before the first ``read``. Sources that cannot resume
        (``resumable = False``) are never checkpointed and never asked to seek.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot resume from a position")

    def event_sequence(self, event: dict[str, Any]) -> tuple[str, int]:
        """``(lane, ordinal)`` of a normalized event this source read (with :attr:`sequence_lanes`)."""
        raise NotImplementedError(f"{type(self).__name__} does not number its events")

    def commit(self, position: Any, dropped: int = 0) -> None:
        """Everything up to and including ``position`` is delivered, parked or dropped: confirm it.

        ``dropped`` counts the events of the batch that ended at ``position`` which an explicit
        drop policy (``drop_newest``, ``drop_oldest``) discarded; a batch with drops is always
        committed on its own, so a source that answers callers can tell them exactly.
        """

    def pause(self) -> None:
        """Backpressure engaged: stop taking new events (e.g. answer 429) until ``resume``."""

    def resume(self) -> None:
        """Backpressure released."""

    @property
    def exhausted(self) -> bool:
        """True when a finite source has nothing left to read (the gateway then drains and stops)."""
        return False


class Compressor(Component):
    """Compresses what the gateway itself writes (file segments, webhook bodies, spill, DLQ)."""

    kind = "compressor"

    @abc.abstractmethod
    def compress(self, data: bytes) -> Compressed:
        """Compress ``data``; the result names the encoding used so a reader can undo it."""


class Limiter(Component):
    """Rate limit, global across workers when it uses shared memory."""

    kind = "limiter"

    @abc.abstractmethod
    def acquire(self, count: int) -> float:
        """Take ``count`` permits: return 0.0 to go now, or the seconds to wait before asking again."""

    def observe_latency(self, seconds: float) -> None:
        """Delivery latency of a batch just acknowledged (adaptive limiters steer by it)."""


class Backpressure(Component):
    """Decides, from buffer utilization, what the source process does with new events.

    Hysteresis: ``update`` engages backpressure when utilization reaches ``high_watermark`` and
    releases it only when utilization falls to ``low_watermark``, so it does not flap around one
    threshold. Strategies differ in ``action`` only; one that overrides ``open`` must call
    ``super().open(context)``.
    """

    kind = "backpressure"

    action: ClassVar[str] = "pause"
    """While engaged: ``pause`` the source, ``drop_newest`` new events, ``drop_oldest`` buffered
    ones, ``throttle`` (read at most :meth:`read_allowance` events), ``spill`` (new frames go to
    disk) or ``prioritize`` (priority tables first; the buffer blocks when full)."""

    def __init__(self, config: ComponentConfig) -> None:
        super().__init__(config)
        self.high_watermark = 0.8
        """Utilization at which backpressure engages (``backpressure.high_watermark``)."""
        self.low_watermark = 0.4
        """Utilization at which it releases (``backpressure.low_watermark``)."""
        self.activations = 0
        """How many times backpressure engaged (``savegress_backpressure_events_total``)."""
        self._engaged = False

    def open(self, context: Context) -> None:
        """Read the watermarks from ``backpressure`` in the profile (defaults 0.8/0.4 without one)."""
        if context.profile is not None:
            section = context.profile.backpressure
            self.high_watermark, self.low_watermark = section.high_watermark, section.low_watermark

    @property
    def engaged(self) -> bool:
        """True while backpressure is engaged."""
        return self._engaged

    def update(self, utilization: float) -> bool:
        """Feed the current buffer utilization (0..1); return True while backpressure is engaged."""
        if self._engaged:
            self._engaged = utilization > self.low_watermark
        elif utilization >= self.high_watermark:
            self._engaged = True
            self.activations += 1
        return self._engaged

    def read_allowance(self, now: float) -> float | None:
        """How many events the source may read now (None: no limit). Throttling strategies only."""
        return None

    def consumed(self, count: int) -> None:
        """``count`` events were just read under :meth:`read_allowance`."""

    def event_deadline(self) -> float | None:
        """Seconds after ingest at which the workers park an event instead of sending it (None: never).

        Asked in the workers, on an instance that was not opened: derive it from the config only.
        """
        return None


class DeadLetterQueue(Component):
    """Parks events that the sink rejected or that exhausted their retries."""

    kind = "dlq"

    @abc.abstractmethod
    def put(self, batch: Batch, reason: str, attempts: int, origin: str) -> None:
        """Durably store every event of ``batch`` with the failure ``reason``; raise if it cannot."""


DeliveryCallback = Callable[[Outcome], None]


class Sink(Component):
    """Delivers batches to a destination and reports each send's outcome exactly once.

    Contract: ``send`` must not block for long; the outcome arrives through ``done`` (from
    ``send`` itself or from a later ``poll``). An event counts as delivered only when ``done``
    says so: the pipeline acknowledges upstream on nothing else.
    """

    kind = "sink"

    @abc.abstractmethod
    def send(self, batch: Batch, done: DeliveryCallback) -> None:
        """Start delivering ``batch``; call ``done`` once with the outcome."""

    def poll(self, timeout_s: float) -> None:
        """Serve pending delivery reports, waiting at most ``timeout_s``."""

    def flush(self, timeout_s: float) -> bool:
        """Wait until every send has reported; return False if ``timeout_s`` passed first."""
        return True

    def retry_overrides(self) -> dict[str, Any]:
        """``retry.*`` values this sink's own section sets (``output.retry``), laid over ``retry``."""
        return {}


KIND_BASES: dict[str, type[Component]] = {
    "source": Source,
    "compressor": Compressor,
    "limiter": Limiter,
    "backpressure": Backpressure,
    "dlq": DeadLetterQueue,
    "sink": Sink,
}
