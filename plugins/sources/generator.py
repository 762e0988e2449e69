"""The generator source: synthetic CDC events for demos, tests and benchmarks.

``source: {type: generator, generator_tables: [public.users, public.orders], key_space: 10000,
row_size: 300, rate: 0, count: 0, operations: [INSERT, UPDATE, DELETE], seed: 0}``.
"""

from __future__ import annotations

import math
import random
import time
import itertools
from typing import Annotated, Any, Callable, ClassVar, Literal

import orjson
from pydantic import Field, StringConstraints, field_validator

from savegress_gw import Batch, Component, ComponentConfig, Context, Source, SourceBatch, hookimpl
from savegress_gw.envelope import format_timestamp
from savegress_gw.units import Size

Operation = Literal["INSERT", "UPDATE", "DELETE"]
TableName = Annotated[str, StringConstraints(pattern=r"^[^.\s]+\.[^.\s]+$")]
_EVERY_OPERATION: list[Operation] = ["INSERT", "UPDATE", "DELETE"]

_WEIGHTED_CYCLE = 100
"""Length of the operation cycle drawn from ``operations`` weights."""
_PAD_POOL_BYTES = 16 << 20
"""At most this many bytes of distinct padding strings (and at most 1024 of them)."""
_CACHED_KEYS = 1 << 16
"""Key spaces up to this size have their keys' texts computed once, not per read."""
_MAX_BACKLOG_S = 1.0
"""With ``rate``, events owed for longer than this (a slow reader, a pause) are forgiven, not burst."""


class GeneratorSource(Source):
    """An endless (or ``count``-long) stream of INSERT/UPDATE/DELETE events with sequence numbers.

    Event ``seq`` (1, 2, 3, ...) has ``id`` ``gen-<seq>``, ``transaction_id`` ``tx-<seq>``,
    ``position`` ``{"sequence": seq}``, primary key ``after.id = (seq - 1) % key_space + 1`` with
    ``metadata.primary_key`` ``("id",)``, and ``after.seq = seq``; the table and the operation
    cycle through ``generator_tables`` and the operation mix. UPDATE and DELETE carry the key
    columns as ``before``; every operation, DELETE included, carries ``after`` (``id``, ``seq``
    and the ``payload`` padding) so a verifier can read ``after.seq`` from any event. Replaying
    from a position yields the same events again (ids and keys depend only on ``seq``), apart from
    the timestamp, which is the time of the ``read`` that produced them.

    Trusted: ``trusted = True`` tells the core that this source emits envelopes that are already
    normalized (every field present, operation upper case, ``id`` a string, ``timestamp`` ISO 8601
    UTC with microseconds, ``source`` set), so it skips ``envelope.normalize``.
    ``read`` returns ``SourceBatch.position`` = the ``seq`` of its last event (an ``int``).
    """

    name = "generator"
    resumable = True
    replays_in_order = True
    trusted: ClassVar[bool] = True

    class Config(ComponentConfig):
        generator_tables: list[TableName] = Field(["public.users", "public.orders"], min_length=1)
        """Tables the events belong to, ``schema.table``, used in turn (``tables`` is the filter every source has)."""
        key_space: int = Field(10_000, ge=1)
        """Primary keys cycle through 1..key_space."""
        row_size: Size = Field(300, le=1 << 20)
        """Approximate bytes of each event's JSON envelope, reached by padding ``after.payload``."""
        rate: float = Field(0.0, ge=0.0)
        """Events per second; 0 = as fast as the gateway reads."""
        count: int = Field(0, ge=0)
        """Stop after the event with this sequence number; 0 = endless."""
        operations: list[Operation] | dict[Operation, float] = Field(_EVERY_OPERATION, min_length=1)
        """A list is cycled in order; a mapping gives each operation's weight in a shuffled cycle of 100."""
        seed: int = 0
        """Seeds the padding text and the shuffle of weighted operations (same seed, same events)."""

        @field_validator("operations")
        @classmethod
        def _some_weight(cls, value: list[Operation] | dict[Operation, float]) -> Any:
            if isinstance(value, dict) and (min(value.values()) < 0 or sum(value.values()) <= 0):
                raise ValueError("operation weights must be >= 0 and not all 0")
            return value

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        rng = random.Random(config.seed)
        operations = _operation_cycle(config.operations, rng)
        tables = [tuple(name.split(".", 1)) for name in config.generator_tables]
        cycle = math.lcm(len(tables), len(operations))
        self._plan = [(schema, table, op, *_template(schema, table, op))
                      for schema, table, op in ((*tables[i % len(tables)], operations[i % len(operations)])
                                                for i in range(cycle))]
        self._pads = [b""]
        key_texts = [str(key) for key in range(1, config.key_space + 1)] if config.key_space <= _CACHED_KEYS else None
        self._keys = (key_texts, list(map(str.encode, key_texts))) if key_texts is not None else None
        pad_length = max(0, config.row_size - self._unpadded_size())
        self._pads = [rng.randbytes(pad_length // 2 + 1).hex()[:pad_length].encode()
                      for _ in range(max(1, min(1024, _PAD_POOL_BYTES // max(pad_length, 1))))]
        self._seq = 0
        self._due_at = 0.0
        self.committed: int | None = None
        """The last position handed to ``commit``."""

    def open(self, context: Context) -> None:
        self._due_at = time.monotonic()

    def seek(self, position: Any) -> None:
        """Continue after ``position``, a ``seq`` returned by ``read``: the next event is ``position + 1``.

        The core calls it once, before the first ``read``, with the last checkpointed position.
        """
        if not isinstance(position, int) or position < 0:
            raise ValueError(f"generator position must be a sequence number (int >= 0), got {position!r}")
        self._seq = position

    def read(self, max_events: int, timeout_s: float) -> SourceBatch | None:
        n = max_events if not self.config.count else min(max_events, self.config.count - self._seq)
        if n > 0 and self.config.rate:
            n = self._pace(n, timeout_s)
        if n <= 0:
            return None
        first = self._seq + 1
        self._seq += n
        return SourceBatch([], self._seq, encoded=self._encode(first, n, time.time_ns()))

    def commit(self, position: Any, dropped: int = 0) -> None:
        self.committed = position

    @property
    def exhausted(self) -> bool:
        return bool(self.config.count) and self._seq >= self.config.count

    def _pace(self, n: int, timeout_s: float) -> int:
        """How many of ``n`` events are due now, sleeping at most ``timeout_s`` for the next one."""
        now = time.monotonic()
        self._due_at = max(self._due_at, now - _MAX_BACKLOG_S)
        if self._due_at > now:
            time.sleep(min(self._due_at - now, timeout_s))
            now = time.monotonic()
            if self._due_at > now:
                return 0
        n = min(n, 1 + int((now - self._due_at) * self.config.rate))
        self._due_at += n / self.config.rate
        return n

    def _encode(self, first: int, n: int, now_ns: int) -> Batch:
        """Events ``first .. first + n - 1`` as columns, the JSON written from per-plan templates.

        The hot loop (this source is ``trusted``: the JSON is exactly the canonical envelope
        ``orjson`` would write for it). The read's primary keys and paddings are cut from
        precomputed cycles (:meth:`_key_texts`, :func:`_window`); per plan entry, the read's
        timestamp is put into its template once, then the entry's events (every ``len(plan)``-th)
        are formatted with ``%b`` slots only (``%d`` would format each number anew) and written
        into the columns by strided slice.
        """
        plan, plans = self._plan, len(self._plan)
        stamp = format_timestamp(now_ns).encode().replace(b"%", b"%%")
        digits = list(map(str, range(first, first + n)))
        seq_bytes = list(map(str.encode, digits))
        pk_texts, pk_bytes = self._key_texts(first, n)
        pads = _window(self._pads, first % len(self._pads), n)
        payloads: list[bytes] = [b""] * n
        keys: list[str] = [""] * n
        for j in range(min(plans, n)):
            _, _, _, head, tail, key_prefix, keyed = plan[(first + j) % plans]
            template = head + stamp + tail
            rows = zip(seq_bytes[j::plans], pk_bytes[j::plans], pads[j::plans])
            payloads[j::plans] = [template % (s, s, s, pk, pk, s, pad) for s, pk, pad in rows] if keyed else \
                [template % (s, s, s, pk, s, pad) for s, pk, pad in rows]
            keys[j::plans] = list(map(key_prefix.__add__, pk_texts[j::plans]))
        offset = first % plans

        def column(field: int) -> list[str]:
            return list(itertools.islice(itertools.cycle([entry[field] for entry in plan]), offset, offset + n))

        return Batch(payloads, keys, list(map("gen-".__add__, digits)), column(2), column(0), column(1),
                     [now_ns // 1_000_000] * n, [now_ns] * n)

    def _key_texts(self, first: int, n: int) -> tuple[list[str], list[bytes]]:
        """The primary keys of events ``first .. first + n - 1`` as text and as UTF-8: cut from the
        key space's texts, computed once, when it has at most :data:`_CACHED_KEYS` keys."""
        start = (first - 1) % self.config.key_space
        if self._keys is not None:
            texts, encoded = self._keys
            return _window(texts, start, n), _window(encoded, start, n)
        texts = [str((seq - 1) % self.config.key_space + 1) for seq in range(first, first + n)]
        return texts, list(map(str.encode, texts))

    def _unpadded_size(self) -> int:
        """Mean JSON size of the plan's events with a 7-digit ``seq`` and the current padding."""
        sample = self._encode(1_000_000, len(self._plan), time.time_ns())
        return round(sum(map(len, sample.payloads)) / len(sample))


def _window(values: list[Any], start: int, n: int) -> list[Any]:
    """``n`` items of the cycle ``values`` from index ``start`` on (wrapping around), by slicing."""
    window = values[start:start + n]
    while len(window) < n:
        window += values[:n - len(window)]
    return window


def _template(schema: str, table: str, operation: str) -> tuple[bytes, bytes, str, bool]:
    """The envelope of one plan entry as ``head`` + timestamp + ``tail``, its message-key prefix, and
    whether ``before`` carries the key (not for INSERT, whose ``before`` is null). ``%b`` slots:
    ``head`` takes seq; ``tail`` takes seq, seq, [pk,] pk, seq and the padding."""
    head = orjson.dumps({"id": "gen-", "source": "generator", "schema": schema, "table": table,
                         "operation": operation})
    keyed = operation != "INSERT"
    head = head[:-1].replace(b"%", b"%%").replace(b'"id":"gen-"', b'"id":"gen-%b"') + b',"timestamp":"'
    tail = (b'","transaction_id":"tx-%b","position":{"sequence":%b},"before":' + (b'{"id":%b}' if keyed else b"null")
            + b',"after":{"id":%b,"seq":%b,"payload":"%b"},"metadata":{"primary_key":["id"]}}')
    return head, tail, f"{table}:", keyed


def _operation_cycle(operations: list[Operation] | dict[Operation, float], rng: random.Random) -> list[Operation]:
    """A list as given; weights as a seeded shuffle of ``_WEIGHTED_CYCLE`` entries in proportion."""
    if isinstance(operations, list):
        return list(operations)
    total = sum(operations.values())
    cycle = [op for op, weight in operations.items() for _ in range(round(weight / total * _WEIGHTED_CYCLE))]
    rng.shuffle(cycle)
    return cycle


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(GeneratorSource)
