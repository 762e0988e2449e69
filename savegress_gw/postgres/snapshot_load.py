"""The initial load: every selected table read through a ``SnapshotReader``, as ``SNAPSHOT`` events.

:class:`InitialSnapshot` hands out rows table by table in primary key order, a slice per
``read``. ``progress()`` is plain data for the source's position::

    {"done": ["public.a"], "table": "public.b", "after": ["1042"]}

(``after``: the text form of the last primary key handed out). A source restarted with it skips
the tables that are done and continues ``table`` after ``after``. SNAPSHOT envelopes have
``before: null``, ``after`` the row, id ``snap-<schema>.<table>:<pk>``, the time the snapshot
started, and ``metadata.snapshot: true`` with the table's primary key; ``read`` hands them out
already encoded (:mod:`savegress_gw.postgres.snapshot_encode`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from savegress_gw import components
from savegress_gw.envelope import now_iso
from savegress_gw.postgres.snapshot import Batch, SnapshotReader, TableName
from savegress_gw.postgres.snapshot_encode import SnapshotEncoder


class InitialSnapshot:
    """Reads ``tables`` (after ``done``; ``table``/``after`` resume one part-way)."""

    def __init__(self, reader: SnapshotReader, tables: list[TableName], done: list[str],
                 table: str | None, after: list[str] | None, database: str, lsn: str,
                 conditions: dict[TableName, str] | None = None) -> None:
        """``lsn``: the slot's consistent point, the position every SNAPSHOT event carries;
        ``conditions``: per table, the row filter its rows must match (the publication's ``WHERE``)."""
        self.reader, self.database = reader, database
        self._position = {"lsn": lsn, "sequence": 0}
        self.pending = list(tables)
        self.done = list(done)
        self.rows = 0
        self._resume_table, self._resume_after = table, after
        self._current: TableName | None = None
        self._batches: Iterator[Batch] | None = None
        self._left: Batch = []
        self._last_pk: tuple[str, ...] | None = None
        self._timestamp = now_iso()
        self._encoder: SnapshotEncoder | None = None
        self._counter = 0
        self._conditions = conditions or {}

    @property
    def finished(self) -> bool:
        return self._current is None and not self.pending and not self._left

    def progress(self) -> dict[str, Any]:
        current = f"{self._current[0]}.{self._current[1]}" if self._current else None
        return {"done": list(self.done), "table": current,
                "after": list(self._last_pk) if self._last_pk is not None and current else None}

    def read(self, limit: int, batch_size: int) -> components.Batch:
        """Up to ``limit`` SNAPSHOT events, encoded (fewer at the end of a table)."""
        while not self._left:
            if self._batches is None and not self._next_table(batch_size):
                return components.Batch.empty()
            assert self._batches is not None
            batch = next(self._batches, None)
            if batch is None:
                self._finish_table()
                continue
            self._left = batch
        rows, self._left = self._left[:limit], self._left[limit:]
        schema, table = self._current  # type: ignore[misc]
        prefix = f"snap-{schema}.{table}:"
        ids = []
        for _, pk in rows:
            if pk:
                ids.append(prefix + ":".join(pk))
            else:
                self._counter += 1
                ids.append(f"{prefix}#{self._counter}")
        assert self._encoder is not None
        events = self._encoder.encode([row for row, _ in rows], ids)
        self._last_pk = rows[-1][1] if rows and rows[-1][1] else self._last_pk
        self.rows += len(rows)
        if not self._left:
            # peek: finish the table now if it has no more rows, so progress says it is done
            batch = next(self._batches, None) if self._batches is not None else None
            if batch is None:
                self._finish_table()
            else:
                self._left = batch
        return events

    def _next_table(self, batch_size: int) -> bool:
        if not self.pending:
            return False
        self._current = self.pending.pop(0)
        name = f"{self._current[0]}.{self._current[1]}"
        after = self._resume_after if name == self._resume_table else None
        self._last_pk = tuple(after) if after else None
        plan = self.reader.plan(self._current)
        meta: dict[str, Any] = {"database": self.database, "snapshot": True}
        if plan.key_columns:
            meta["primary_key"] = list(plan.key_columns)
        self._encoder = SnapshotEncoder(*self._current, self._timestamp, self._position, meta)
        self._batches = self.reader.iter_table(self._current, after, batch_size,
                                               self._conditions.get(self._current))
        return True

    def _finish_table(self) -> None:
        assert self._current is not None
        self.done.append(f"{self._current[0]}.{self._current[1]}")
        self._current, self._batches, self._last_pk = None, None, None

    def close(self) -> None:
        self.reader.close()
