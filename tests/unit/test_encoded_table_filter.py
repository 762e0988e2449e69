"""The source process filters an encoded batch by table without decoding its payloads."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from savegress_gw.components import Batch, SourceBatch
from savegress_gw.filters import TableFilter
from savegress_gw.source_process import Router


class Counts:
    def __init__(self) -> None:
        self.counted: dict[tuple[str, str], float] = {}

    def inc(self, name: str, amount: float = 1.0, label: str = "") -> None:
        self.counted[(name, label)] = self.counted.get((name, label), 0) + amount


def router(tables: list[str], columns: dict[str, list[str]] | None = None) -> Any:
    fake = SimpleNamespace(metrics=Counts(), filter=TableFilter(tables, [], columns or {}))
    fake._table_filtered = lambda batch: Router._table_filtered(fake, batch)
    return fake


def test_events_of_tables_left_out_are_dropped_and_counted_without_decoding_payloads() -> None:
    fake = router(["public.a"])
    tables = ["a", "b", "a", "b", "b"]
    encoded = Batch([b"not json %d" % i for i in range(5)], [f"{t}:{i}" for i, t in enumerate(tables)],
                    [f"e{i}" for i in range(5)], ["SNAPSHOT"] * 5, ["public"] * 5, tables, [1] * 5, [0] * 5)
    batch = Router._encoded(fake, SourceBatch([], None, encoded=encoded))
    assert batch.ids == ["e0", "e2"] and batch.payloads == [b"not json 0", b"not json 2"]
    assert batch.ingest_ns[0] > 0 and len(set(batch.ingest_ns)) == 1
    assert fake.metrics.counted == {("events_dropped_total", "filtered"): 3}


def test_a_batch_of_selected_tables_only_is_passed_on_as_it_is() -> None:
    fake = router(["public.*"])
    encoded = Batch([b"x"], ["a:1"], ["e1"], ["SNAPSHOT"], ["public"], ["a"], [1], [0])
    assert Router._encoded(fake, SourceBatch([], None, encoded=encoded)) is encoded
    assert fake.metrics.counted == {}
