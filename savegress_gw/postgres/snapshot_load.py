"""The initial load: the selected tables read inside one snapshot, as encoded ``SNAPSHOT`` events.

:class:`InitialSnapshot` drives N :class:`TableReader`s (``snapshot.parallel_workers``), each
from a thread of its own. A reader that is free takes the next pending table (tables in progress
at a crash first) and gives its rows in key order, a COPY batch at a time, converted and encoded
(:func:`encoded_batches`): by :class:`ThreadReader` in this process, or by a reader process
(``savegress_gw.postgres.snapshot_proc``). So up to N tables are in flight at once, and every
table is read by one reader only, in key order. The encoded batches wait in one queue of at most
N + 1; ``read`` hands them out, whole or in slices, in the order they were queued.

Progress is :class:`Progress`, plain data for the source's position::

    {"done": ["public.a"], "tables": {"public.b": ["1042"], "public.heap": null}}

``done``: tables whose every row was handed out; ``tables``: tables some of whose rows were
handed out, with the text form of the last key handed out (``null``: the table has no key to
resume after and is read again from its start). ``progress()`` describes exactly what the
``read`` calls so far handed out (a table's last key only grows), so the position of a read batch
claims nothing after that batch. A source restarted with it skips the done tables and continues
each table of ``tables`` after its key. The first form, ``{"done": [...], "table": "public.b",
"after": ["1042"]}`` (one table in progress), is read too.

SNAPSHOT envelopes have ``before: null``, ``after`` the row, id ``snap-<schema>.<table>:<pk>``
(``…:#<n>``, numbered per table, without a key), the time the snapshot started, and
``metadata.snapshot: true`` with the table's primary key; they are handed out already encoded
(:mod:`savegress_gw.postgres.snapshot_encode`). A reader's error is raised by ``read``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from savegress_gw import components
from savegress_gw.postgres.snapshot import SnapshotReader, TableName
from savegress_gw.postgres.snapshot_encode import SnapshotEncoder

_PUT_POLL_S = 0.1
_JOIN_S = 30.0


Key = tuple[str, ...]
EncodedBatch = tuple[components.Batch, list[Key]]
"""SNAPSHOT events of one table, encoded, with the text form of each row's key."""


def dotted(table: TableName) -> str:
    """``("public", "b")`` → ``"public.b"``, the name positions use."""
    return f"{table[0]}.{table[1]}"


@dataclass(frozen=True)
class Envelope:
    """What every SNAPSHOT event of one load shares: the database, the slot's consistent point
    (the events' position) and the time the snapshot started (ISO 8601)."""

    database: str
    lsn: str
    timestamp: str


def encoded_batches(reader: SnapshotReader, table: TableName, after: list[str] | None, batch_size: int,
                    condition: str | None, envelope: Envelope) -> Generator[EncodedBatch, None, None]:
    """``table``'s rows after ``after`` (matching ``condition``) as encoded SNAPSHOT events, a COPY
    batch at a time, in key order (module docstring for the envelope and the ids)."""
    plan = reader.plan(table)
    meta: dict[str, Any] = {"database": envelope.database, "snapshot": True}
    if plan.key_columns:
        meta["primary_key"] = list(plan.key_columns)
    encoder = SnapshotEncoder(*table, envelope.timestamp, {"lsn": envelope.lsn, "sequence": 0}, meta)
    prefix = f"snap-{dotted(table)}:"
    numbered = 0
    batches = reader.iter_table(table, after, batch_size, condition)
    try:
        for batch in batches:
            ids = [prefix + ":".join(pk) if pk else f"{prefix}#{numbered + i}" for i, (_, pk) in enumerate(batch, 1)]
            numbered += len(batch)
            yield encoder.encode([row for row, _ in batch], ids), [pk for _, pk in batch]
    finally:
        batches.close()  # waits for a COPY still running on the prefetch thread


class TableReader(Protocol):
    """A reader inside the load's snapshot, as :class:`InitialSnapshot` drives it."""

    def batches(self, table: TableName, after: list[str] | None,
                condition: str | None) -> Generator[EncodedBatch, None, None]:
        """``table``'s rows after ``after``, matching ``condition``, encoded, in key order (the
        generator is closed when the load stops part-way)."""
        ...

    def close(self) -> None:
        """End the reader's transaction and connection (and its process, if it has one)."""
        ...


class ThreadReader:
    """A :class:`TableReader` converting and encoding in this process (on an ``InitialSnapshot``
    thread)."""

    def __init__(self, reader: SnapshotReader, envelope: Envelope, batch_size: int) -> None:
        self.reader, self.envelope, self.batch_size = reader, envelope, batch_size

    def batches(self, table: TableName, after: list[str] | None,
                condition: str | None) -> Generator[EncodedBatch, None, None]:
        return encoded_batches(self.reader, table, after, self.batch_size, condition, self.envelope)

    def close(self) -> None:
        self.reader.close()


@dataclass
class Progress:
    """Which tables are done and, per table part-way read, the last key handed out."""

    done: list[str] = field(default_factory=list)
    tables: dict[str, list[str] | None] = field(default_factory=dict)

    @classmethod
    def from_position(cls, data: Mapping[str, Any]) -> Progress:
        """A position's ``snapshot`` entry, of either form (module docstring)."""
        tables = {name: list(key) if key is not None else None for name, key in data.get("tables", {}).items()}
        if data.get("table"):  # the one-table form
            tables[data["table"]] = list(data["after"]) if data.get("after") is not None else None
        return cls(list(data.get("done", [])), tables)

    def to_position(self) -> dict[str, Any]:
        return {"done": list(self.done), "tables": {name: None if key is None else list(key)
                                                    for name, key in self.tables.items()}}

    def handed_out(self, table: str, last_key: tuple[str, ...]) -> None:
        """Rows of ``table`` up to ``last_key`` (``()``: the table has no key) were handed out."""
        self.tables[table] = list(last_key) if last_key else None

    def finish(self, table: str) -> None:
        """Every row of ``table`` was handed out."""
        self.tables.pop(table, None)
        self.done.append(table)


@dataclass
class _Chunk:
    """Encoded rows of one table, in key order, with their keys; ``last``: none come after."""

    table: str
    events: components.Batch
    keys: list[tuple[str, ...]]
    last: bool = False


_Item = Union[_Chunk, BaseException, None]
"""What a reader queues: rows, the error that stopped it, or None when it has no table left."""


class InitialSnapshot:
    """Reads ``tables`` with ``readers`` (module docstring), resuming from ``progress``."""

    def __init__(self, readers: list[TableReader], tables: list[TableName], progress: Progress,
                 conditions: dict[TableName, str] | None = None) -> None:
        """``tables``: those to read (not the done ones); ``conditions``: per table, the row filter
        its rows must match (the publication's ``WHERE``). The readers start at once."""
        self.progress_state = Progress(list(progress.done), dict(progress.tables))
        self.rows = 0
        self._resume_keys = dict(progress.tables)
        in_progress = [t for t in tables if dotted(t) in self._resume_keys]
        self._pending = in_progress + [t for t in tables if t not in in_progress]
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=len(readers) + 1)
        self._stop = threading.Event()
        self._conditions = conditions or {}
        self._chunk: _Chunk | None = None
        self._offset = 0
        self._running = len(readers)
        self._readers = readers
        self._threads = [threading.Thread(target=self._run, args=(reader,), daemon=True,
                                          name=f"snapshot-reader-{index}") for index, reader in enumerate(readers)]
        for thread in self._threads:
            thread.start()

    @property
    def finished(self) -> bool:
        """Every reader is done and everything it read was handed out."""
        return self._running == 0 and self._chunk is None

    def progress(self) -> dict[str, Any]:
        """What has been handed out so far, as the position's ``snapshot`` entry."""
        return self.progress_state.to_position()

    def read(self, limit: int, timeout_s: float) -> components.Batch:
        """Up to ``limit`` SNAPSHOT events, encoded, of one or more tables; empty if none was
        ready within ``timeout_s`` or all are read (``finished``)."""
        out = components.Batch.empty()
        wait = timeout_s
        while len(out) < limit:
            if self._chunk is None and not self._next_chunk(wait):
                break
            wait = 0.0  # only the first chunk is waited for
            chunk = self._chunk
            assert chunk is not None
            stop = min(len(chunk.keys), self._offset + limit - len(out))
            if stop > self._offset:
                out.extend(chunk.events.slice(self._offset, stop))
                self.progress_state.handed_out(chunk.table, chunk.keys[stop - 1])
                self.rows += stop - self._offset
                self._offset = stop
            if self._offset == len(chunk.keys):
                if chunk.last:
                    self.progress_state.finish(chunk.table)
                self._chunk, self._offset = None, 0
        return out

    def _next_chunk(self, timeout_s: float) -> bool:
        """Take the next queued chunk into ``_chunk``; False if none came within ``timeout_s``.
        Raises a reader's error."""
        while self._running:
            try:
                item = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self._running -= 1
                continue
            self._chunk, self._offset = item, 0
            return True
        return False

    # ------------------------------------------------------------------ reader threads

    def _run(self, reader: TableReader) -> None:
        """One reader's thread: tables until none is left, then None (or the error) queued."""
        try:
            while (table := self._take_table()) is not None and not self._stop.is_set():
                self._read_table(reader, table)
        except BaseException as exc:  # handed to read(), which raises it in the source's thread
            self._put(exc)
            return
        self._put(None)

    def _take_table(self) -> TableName | None:
        with self._lock:
            return self._pending.pop(0) if self._pending else None

    def _read_table(self, reader: TableReader, table: TableName) -> None:
        name = dotted(table)
        batches = reader.batches(table, self._resume_keys.get(name), self._conditions.get(table))
        try:
            for events, keys in batches:
                if self._stop.is_set():
                    return
                self._put(_Chunk(name, events, keys))
        finally:
            batches.close()
        self._put(_Chunk(name, components.Batch.empty(), [], last=True))

    def _put(self, item: _Item) -> None:
        """Queue ``item``, waiting for room unless the snapshot is being closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_PUT_POLL_S)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Stop the readers (each ends after its current batch), wait for them and close their
        connections."""
        self._stop.set()
        for thread in self._threads:
            thread.join(_JOIN_S)
        for reader, thread in zip(self._readers, self._threads):
            if not thread.is_alive():
                reader.close()

