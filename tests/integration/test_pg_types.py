"""Every type of reference.md 2.6 through real replication output into exact JSON."""

from __future__ import annotations

import orjson
import pytest

from savegress_gw.postgres.pgoutput import Insert, Relation, TypeInfo
from savegress_gw.postgres.types import RowDecoder
from tests.harness.postgres import capture
from tests.integration.pg_type_cases import COLUMNS, SETUP, expected_rows, insert_statements

pytestmark = pytest.mark.timeout(180)


def test_streamed_values_become_the_chosen_json(postgres, pg_database) -> None:
    messages = capture(postgres, pg_database, insert_statements(), setup=SETUP)
    types = {m.oid: m for m in messages if isinstance(m, TypeInfo)}
    # the enum, its array and the domain arrive as Type messages; the domain names its base type
    assert sorted((t.namespace, t.name) for t in types.values()) == [
        ("", "int4"), ("public", "_mood"), ("public", "mood")
    ]
    (relation,) = [m for m in messages if isinstance(m, Relation)]
    assert [c.name for c in relation.columns] == COLUMNS
    decoder = RowDecoder(relation, types)
    rows = [decoder.decode(m.new) for m in messages if isinstance(m, Insert)]
    assert [unchanged for _, unchanged in rows] == [[]] * len(rows)
    for (row, _), expected in zip(rows, expected_rows(), strict=True):
        assert row == expected
        assert orjson.dumps(row) == orjson.dumps(expected)  # same JSON text, key order included
