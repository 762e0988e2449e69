"""COPY text rows converted by the generated per-table function, against the general path."""

from __future__ import annotations

import pytest

from savegress_gw.postgres.copy_rows import rows_converter
from savegress_gw.postgres.pgoutput import Column, Relation
from savegress_gw.postgres.snapshot import parse_copy_text
from savegress_gw.postgres.types import RowDecoder


def decoder(*columns: Column) -> RowDecoder:
    return RowDecoder(Relation(1, "public", "t", "d", columns))


TABLE = decoder(Column("id", 20, -1, True), Column("doc", 25, -1, False), Column("f", 701, -1, False),
                Column("tags", 1009, -1, False), Column("j", 3802, -1, False))


def general(text: str, key_indexes: tuple[int, ...]) -> list:
    return [(TABLE.decode_complete(v), tuple(v[i] for i in key_indexes)) for v in parse_copy_text(text)]


def test_plain_escaped_null_and_empty_lines_match_the_general_path() -> None:
    text = ("1\tplain\t1.5\t{a,b}\t{\"k\": [1, 2.5]}\n"
            "2\ttab\\there\tNaN\t{\"x y\",NULL}\t\\N\n"
            "3\t\t-0\t{}\t[]\n"
            "4\t\\N\t\\N\t\\N\tnull\n")
    convert = rows_converter(TABLE, (0,), parse_copy_text)
    rows = convert(text)
    assert rows == general(text, (0,))
    assert rows[1] == ({"id": 2, "doc": "tab\there", "f": "NaN", "tags": ["x y", None], "j": None}, ("2",))
    assert rows[2][0]["doc"] == "" and rows[3][0]["doc"] is None
    assert convert("") == []


def test_an_empty_line_is_a_row_of_a_one_column_table() -> None:
    one = decoder(Column("k", 25, -1, True))
    assert rows_converter(one, (0,), parse_copy_text)("\na\n") == [({"k": ""}, ("",)), ({"k": "a"}, ("a",))]
    assert parse_copy_text("\na\n") == [[""], ["a"]]


def test_composite_and_missing_keys() -> None:
    text = "7\tx\t2\t{}\t{}\n"
    assert rows_converter(TABLE, (1, 0), parse_copy_text)(text)[0][1] == ("x", "7")
    assert rows_converter(TABLE, (), parse_copy_text)(text)[0][1] == ()


def test_a_value_that_does_not_convert_or_a_wrong_width_raises_the_error_naming_the_column() -> None:
    convert = rows_converter(TABLE, (0,), parse_copy_text)
    with pytest.raises(ValueError, match=r"public\.t\.id \(type oid 20\): cannot convert '1\.5'"):
        convert("1.5\tx\t1\t{}\t{}\n")
    with pytest.raises(ValueError, match="4 values but the relation 5 columns"):
        convert("1\tx\t1\t{}\n")


def test_a_table_without_columns_has_one_empty_row_per_line() -> None:
    assert rows_converter(decoder(), (), parse_copy_text)("\n\n") == [({}, ()), ({}, ())]
