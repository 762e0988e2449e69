"""pgoutput byte layouts, LSN text, and the text → JSON converters on hand-made input.

The same decoder is checked on real replication output in tests/integration/test_pg_decoder.py;
here the cases are the ones a live server does not produce on demand (errors, odd arrays)."""

from __future__ import annotations

import struct

import pytest

from savegress_gw.postgres.pgoutput import (
    PG_EPOCH_OFFSET_US,
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    decode,
    lsn_to_str,
    str_to_lsn,
)
from savegress_gw.postgres.types import RowDecoder, converter_for, parse_array


def tuple_data(*values: object) -> bytes:
    out = struct.pack(">H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED_TOAST:
            out += b"u"
        else:
            raw = str(value).encode()
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


def test_begin_and_commit_carry_unix_microseconds() -> None:
    begin = decode(b"B" + struct.pack(">QqI", 0x1_0000_0010, 5, 4_000_000_000))
    assert begin == Begin(0x1_0000_0010, 5 + PG_EPOCH_OFFSET_US, 4_000_000_000)
    commit = decode(b"C" + struct.pack(">BQQq", 0, 0x20, 0x48, -1))
    assert commit == Commit(0, 0x20, 0x48, PG_EPOCH_OFFSET_US - 1)


def test_relation_type_origin() -> None:
    payload = (
        b"R" + struct.pack(">I", 3_000_000_000) + b"sch\x00t\xc3\xa4b\x00"
        + b"f" + struct.pack(">H", 2)
        + b"\x01id\x00" + struct.pack(">Ii", 23, -1)
        + b"\x00n\x00" + struct.pack(">Ii", 1700, 655366)
    )
    assert decode(payload) == Relation(
        3_000_000_000, "sch", "täb", "f",
        (Column("id", 23, -1, True), Column("n", 1700, 655366, False)),
    )
    assert decode(b"Y" + struct.pack(">I", 16400) + b"public\x00mood\x00") == TypeInfo(
        16400, "public", "mood"
    )
    assert decode(b"O" + struct.pack(">Q", 7) + b"node1\x00") == Origin(7, "node1")


def test_dml_tuples() -> None:
    rel = struct.pack(">I", 42)
    assert decode(b"I" + rel + b"N" + tuple_data("1", None, "ä")) == Insert(42, ("1", None, "ä"))
    assert decode(b"U" + rel + b"N" + tuple_data("1", UNCHANGED_TOAST)) == Update(
        42, None, None, ("1", UNCHANGED_TOAST)
    )
    payload = b"U" + rel + b"K" + tuple_data("1", None) + b"N" + tuple_data("2", "x")
    assert decode(payload) == Update(42, "K", ("1", None), ("2", "x"))
    assert decode(b"U" + rel + b"O" + tuple_data("1", "") + b"N" + tuple_data("1", "y")) == Update(
        42, "O", ("1", ""), ("1", "y")
    )
    assert decode(b"D" + rel + b"O" + tuple_data("1", "a")) == Delete(42, "O", ("1", "a"))


def test_truncate_flags_and_message() -> None:
    payload = b"T" + struct.pack(">iB", 2, 3) + struct.pack(">II", 10, 4_000_000_000)
    assert decode(payload) == Truncate((10, 4_000_000_000), True, True)
    assert decode(b"T" + struct.pack(">iB", 1, 0) + struct.pack(">I", 10)) == Truncate(
        (10,), False, False
    )
    payload = (
        b"M" + struct.pack(">BQ", 0, 99) + b"savegress.hb\x00" + struct.pack(">i", 3) + b"\x00ab"
    )
    assert decode(payload) == LogicalMessage(False, 99, "savegress.hb", b"\x00ab")


@pytest.mark.parametrize("byte", list("SEcAbPpKr"))
def test_streaming_and_two_phase_messages_are_refused_by_name(byte: str) -> None:
    with pytest.raises(ValueError, match=rf"'{byte}' .*not supported with proto_version 1"):
        decode(byte.encode() + b"\x00" * 40)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "empty"),
        (b"Z\x00", "unknown pgoutput message type 'Z'"),
        (b"B\x00\x01", "truncated or malformed pgoutput message 'B'"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"b", "binary"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"x", "kind 'x'"),
        (b"D" + struct.pack(">I", 1) + b"N" + tuple_data("1"), "expected 'K' or 'O'"),
        (b"Y" + struct.pack(">I", 1) + b"public", "unterminated string"),
    ],
)
def test_malformed_payloads_raise_value_error(payload: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode(payload)


def test_memoryview_payload_is_accepted() -> None:
    payload = b"I" + struct.pack(">I", 5) + b"N" + tuple_data("x")
    assert decode(memoryview(payload)) == Insert(5, ("x",))


def test_lsn_text_round_trip() -> None:
    assert lsn_to_str(0x16B3748) == "0/16B3748"
    assert lsn_to_str((0xA << 32) | 0xFF) == "A/FF"
    assert str_to_lsn("A/FF") == (0xA << 32) | 0xFF
    assert str_to_lsn("ffffffff/ffffffff") == 2**64 - 1
    for bad in ("", "16B3748", "0/", "x/1", "1/2/3", "123456789/0"):
        with pytest.raises(ValueError, match="not an LSN"):
            str_to_lsn(bad)


def test_unchanged_toast_is_a_singleton() -> None:
    import pickle

    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert type(UNCHANGED_TOAST)() is UNCHANGED_TOAST
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", []),
        ("{1,NULL,3}", [1, None, 3]),
        ("{{1,NULL},{3,4}}", [[1, None], [3, 4]]),
        ("[0:1]={5,6}", [5, 6]),
        ("{{{1}},{{2}}}", [[[1]], [[2]]]),
        ("{{},{}}", [[], []]),
    ],
)
def test_int_arrays(text: str, expected: list) -> None:
    assert converter_for(1007)(text) == expected


def test_quoted_text_array_elements() -> None:
    text = r'{"a b","c\"d","NULL",NULL,"","x,y","back\\slash",plain,"{br}"}'
    assert parse_array(text) == [
        "a b", 'c"d', "NULL", None, "", "x,y", "back\\slash", "plain", "{br}"
    ]
    assert parse_array('{{"a,1",b},{NULL,"d"}}') == [["a,1", "b"], [None, "d"]]


def test_box_array_uses_semicolons() -> None:
    assert converter_for(1020)("{(1,1),(0,0);(2,2),(1,1)}") == ["(1,1),(0,0)", "(2,2),(1,1)"]


@pytest.mark.parametrize("text", ["{1,2", "1,2}", "{{1}", "{1}}"])
def test_malformed_arrays_raise(text: str) -> None:
    with pytest.raises(ValueError, match="malformed array"):
        parse_array(text)


def test_user_types_from_type_messages() -> None:
    types = {
        16500: TypeInfo(16500, "", "int4"),  # a domain over int4
        16501: TypeInfo(16501, "public", "mood"),  # an enum
        16502: TypeInfo(16502, "public", "_mood"),  # its array
        16503: TypeInfo(16503, "public", "int4"),  # a user type that only shares the name
    }
    assert converter_for(16500, types)("7") == 7
    assert converter_for(16501, types)("happy") == "happy"
    assert converter_for(16502, types)('{happy,"so sad"}') == ["happy", "so sad"]
    assert converter_for(16503, types)("7") == "7"
    assert converter_for(99999, types)("(1,2)") == "(1,2)"


def test_row_decoder_omits_unchanged_toast_and_names_failures() -> None:
    relation = Relation(
        1, "public", "t", "d",
        (Column("id", 20, -1, True), Column("doc", 25, -1, False), Column("f", 701, -1, False)),
    )
    decoder = RowDecoder(relation)
    assert decoder.decode(("9223372036854775807", UNCHANGED_TOAST, "NaN")) == (
        {"id": 9223372036854775807, "f": "NaN"},
        ["doc"],
    )
    assert decoder.decode_key(("5", None, None)) == {"id": 5}
    assert decoder.decode_complete(("5", None, "-1.5e-300")) == {
        "id": 5, "doc": None, "f": -1.5e-300
    }
    with pytest.raises(ValueError, match=r"public\.t\.id \(type oid 20\): cannot convert '1\.5'"):
        decoder.decode_complete(("1.5", None, None))
    with pytest.raises(ValueError, match=r"public\.t\.f \(type oid 701\): cannot convert 'abc'"):
        decoder.decode(("1", "x", "abc"))
    with pytest.raises(ValueError, match="2 values but the relation 3 columns"):
        decoder.decode(("1", "x"))
