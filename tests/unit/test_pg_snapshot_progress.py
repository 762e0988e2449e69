"""The initial load's bookkeeping without a server: which rows a position claims, how a resumed
snapshot continues each table, both position forms (``savegress_gw.postgres.snapshot_load``)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from savegress_gw.postgres.snapshot import SnapshotError, TableName
from savegress_gw.postgres.snapshot_load import Envelope, InitialSnapshot, Progress, ThreadReader

pytestmark = pytest.mark.timeout(60)

A, B, C, D = (("public", name) for name in "abcd")
ENVELOPE = Envelope("db", "0/1", "2026-11-27T12:00:00.000000Z")


class FakeReader:
    """A ``SnapshotReader`` over in-memory tables of integer keys (``None``: a table without a
    key, numbers as rows); every ``iter_table`` call is recorded in ``calls``."""

    def __init__(self, tables: dict[TableName, list[int] | None], calls: list[tuple[str, Any]],
                 fail: TableName | None = None) -> None:
        self.tables, self.calls, self.fail = tables, calls, fail
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def plan(self, table: TableName) -> Any:
        return SimpleNamespace(key_columns=("id",) if self.tables[table] is not None else ())

    def iter_table(self, table: TableName, after_pk: Any, batch_size: int,
                   condition: str | None) -> Iterator[list[tuple[dict[str, Any], tuple[str, ...]]]]:
        self.calls.append((f"{table[0]}.{table[1]}", after_pk))
        if table == self.fail:
            raise SnapshotError("reading public.d: boom")
        keys = self.tables[table]
        rows = [({"v": n}, ()) for n in range(3)] if keys is None else [
            ({"id": k}, (str(k),)) for k in keys if after_pk is None or k > int(after_pk[0])]
        return (rows[start:start + batch_size] for start in range(0, len(rows), batch_size))


def threads(*readers: FakeReader, batch_size: int) -> list[ThreadReader]:
    return [ThreadReader(reader, ENVELOPE, batch_size) for reader in readers]  # type: ignore[arg-type]


def drain(snapshot: InitialSnapshot, limit: int) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """(events handed out, position's snapshot entry) per non-empty read, until finished."""
    while not snapshot.finished:
        batch = snapshot.read(limit, 5.0)
        if len(batch):
            yield [orjson.loads(payload) for payload in batch.payloads], snapshot.progress()


def test_both_position_forms_are_read() -> None:
    old = Progress.from_position({"done": ["public.a"], "table": "public.b", "after": ["1042"]})
    assert old == Progress(["public.a"], {"public.b": ["1042"]})
    assert Progress.from_position({"done": ["public.a"], "table": None, "after": None}) == Progress(["public.a"])
    assert Progress.from_position({"done": [], "table": "public.h", "after": None}).tables == {"public.h": None}
    new = Progress(["public.a"], {"public.b": ["7", "x"], "public.h": None})
    assert Progress.from_position(orjson.loads(orjson.dumps(new.to_position()))) == new


def test_each_position_claims_exactly_the_rows_handed_out_up_to_its_batch() -> None:
    data: dict[TableName, list[int] | None] = {A: list(range(1, 23)), B: list(range(1, 11)), C: None, D: []}
    calls: list[tuple[str, Any]] = []
    snapshot = InitialSnapshot(threads(*(FakeReader(data, calls) for _ in range(3)), batch_size=4), [A, B, C, D],
                               Progress())
    handed: dict[str, list[Any]] = {}
    for events, progress in drain(snapshot, 3):
        assert len(events) <= 3
        for event in events:
            handed.setdefault(f"public.{event['table']}", []).append(event["after"].get("id", event["id"]))
        for table, rows in handed.items():
            keys = data[("public", table[7:])]
            complete = len(rows) == (3 if keys is None else len(keys))
            if table in progress["done"]:
                assert complete, f"{table} claimed done with {rows} handed out"
            else:
                expected = None if keys is None else [str(rows[-1])]
                assert progress["tables"][table] == expected
        assert set(progress["tables"]) <= set(handed)
    assert handed["public.a"] == list(range(1, 23)) and handed["public.b"] == list(range(1, 11))
    assert handed["public.c"] == ["snap-public.c:#1", "snap-public.c:#2", "snap-public.c:#3"]
    assert sorted(snapshot.progress()["done"]) == ["public.a", "public.b", "public.c", "public.d"]
    assert snapshot.progress()["tables"] == {} and snapshot.rows == 35
    assert sorted(calls) == [("public.a", None), ("public.b", None), ("public.c", None), ("public.d", None)]


def test_a_resumed_snapshot_continues_each_table_in_progress_after_its_key_first() -> None:
    data: dict[TableName, list[int] | None] = {B: list(range(1, 11)), C: [1, 2, 3], D: list(range(1, 6))}
    progress = Progress.from_position({"done": ["public.a"], "tables": {"public.d": ["3"], "public.b": ["8"]}})
    calls: list[tuple[str, Any]] = []
    snapshot = InitialSnapshot(threads(FakeReader(data, calls), batch_size=100), [B, C, D], progress)
    ids = [event["after"]["id"] for events, _ in drain(snapshot, 100) for event in events]
    assert calls == [("public.b", ["8"]), ("public.d", ["3"]), ("public.c", None)]  # in progress first
    assert ids == [9, 10, 4, 5, 1, 2, 3]
    assert snapshot.progress() == {"done": ["public.a", "public.b", "public.d", "public.c"], "tables": {}}


def test_a_readers_error_is_raised_by_read() -> None:
    calls: list[tuple[str, Any]] = []
    reader = FakeReader({D: [1]}, calls, fail=D)
    snapshot = InitialSnapshot(threads(reader, batch_size=10), [D], Progress())
    with pytest.raises(SnapshotError, match="reading public.d: boom"):
        list(drain(snapshot, 10))
    snapshot.close()
    assert reader.closed
