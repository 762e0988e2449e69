"""A table with every type of reference.md 2.6 (and the notes' §6 list), rows with typical, NULL
and edge values, and the exact JSON each row must become. Shared by the stream and snapshot tests
so both paths are held to one answer."""

from __future__ import annotations

from typing import Any

SETUP = [
    "CREATE TYPE mood AS ENUM ('happy', 'so sad', 'ünïcode')",
    "CREATE DOMAIN posint AS int4 CHECK (VALUE > 0)",
    """CREATE TABLE types (
        id int4 PRIMARY KEY,
        b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
        n numeric(10,2), nn numeric, m money,
        t text, vc varchar(10), bp char(5), nm name,
        by bytea, j json, jb jsonb, u uuid,
        d date, ts timestamp, tstz timestamptz, tm time, tmtz timetz, iv interval,
        ip inet, cd cidr, mac macaddr, pt point, bits bit(4), vb varbit, x xml, lsn pg_lsn,
        rng int4range, e mood, dm posint,
        ai int4[], at text[], ajb jsonb[], ats timestamptz[], an numeric[], ab bool[],
        aby bytea[], ae mood[], af float8[], apt point[], a2 int4[][], ad date[]
    )""",
]

COLUMNS = [
    "id", "b", "i2", "i4", "i8", "f4", "f8", "n", "nn", "m", "t", "vc", "bp", "nm", "by", "j",
    "jb", "u", "d", "ts", "tstz", "tm", "tmtz", "iv", "ip", "cd", "mac", "pt", "bits", "vb", "x",
    "lsn", "rng", "e", "dm", "ai", "at", "ajb", "ats", "an", "ab", "aby", "ae", "af", "apt", "a2",
    "ad",
]

# (SQL literal per column, expected JSON value per column)
ROWS: list[tuple[dict[str, str], dict[str, Any]]] = [
    (
        {
            "id": "1", "b": "true", "i2": "-32768", "i4": "2147483647",
            "i8": "9223372036854775807", "f4": "1.1", "f8": "0.1", "n": "12.3",
            "nn": "-0.000001234", "m": "1234.5", "t": "'héllo ✓ 😀 \"q\" \\'",
            "vc": "'ab'", "bp": "'ab'", "nm": "'nm'", "by": "'\\xdeadbeef'",
            "j": "'{\"k\": [1, 2.5, \"x\", null, true], \"big\": 12345678901234}'",
            "jb": "'{\"b\": {\"c\": \"ü\"}, \"a\": 1}'",
            "u": "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "d": "'2024-02-29'",
            "ts": "'2024-03-10 02:30:00.123456'", "tstz": "'2024-03-10 09:30:00.5+02'",
            "tm": "'23:59:59.999999'", "tmtz": "'10:00:00+05:30'",
            "iv": "'1 year 2 months 3 days 04:05:06.7'", "ip": "'10.1.2.3'",
            "cd": "'10.1.0.0/16'", "mac": "'08:00:2b:01:02:03'", "pt": "'(1.5,-2)'",
            "bits": "B'1010'", "vb": "B'101'", "x": "'<a>ü</a>'", "lsn": "'16/B374D848'",
            "rng": "'[1,10)'", "e": "'so sad'", "dm": "42", "ai": "'{1,2,3}'",
            "at": """'{"a b","c\\"d","NULL",NULL,"","x,y","back\\\\slash","{}",ü}'""",
            "ajb": "ARRAY['{\"a\": [1, \"x,y\"]}'::jsonb, '[]'::jsonb, NULL]",
            "ats": "ARRAY['2024-01-01 00:00:00+00'::timestamptz, 'infinity']",
            "an": "'{1.50,NaN,-0.001}'", "ab": "'{t,f,NULL}'",
            "aby": "ARRAY['\\x01'::bytea, '\\x'::bytea]", "ae": "'{happy,\"so sad\"}'",
            "af": "'{1.5,NaN,Infinity,-Infinity,1e300}'", "apt": "ARRAY[point(1,2), NULL]",
            "a2": "'{{1,NULL},{3,4}}'", "ad": "'{2024-01-02,infinity}'",
        },
        {
            "id": 1, "b": True, "i2": -32768, "i4": 2147483647, "i8": 9223372036854775807,
            "f4": 1.1, "f8": 0.1, "n": "12.30", "nn": "-0.000001234", "m": "$1,234.50",
            "t": 'héllo ✓ 😀 "q" \\', "vc": "ab", "bp": "ab   ", "nm": "nm",
            "by": "3q2+7w==",
            "j": {"k": [1, 2.5, "x", None, True], "big": 12345678901234},
            "jb": {"a": 1, "b": {"c": "ü"}},
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "d": "2024-02-29",
            "ts": "2024-03-10T02:30:00.123456Z", "tstz": "2024-03-10T07:30:00.5+00:00",
            "tm": "23:59:59.999999", "tmtz": "10:00:00+05:30", "iv": "P1Y2M3DT4H5M6.7S",
            "ip": "10.1.2.3", "cd": "10.1.0.0/16", "mac": "08:00:2b:01:02:03",
            "pt": {"x": 1.5, "y": -2.0}, "bits": "1010", "vb": "101", "x": "<a>ü</a>",
            "lsn": "16/B374D848", "rng": "[1,10)", "e": "so sad", "dm": 42, "ai": [1, 2, 3],
            "at": ["a b", 'c"d', "NULL", None, "", "x,y", "back\\slash", "{}", "ü"],
            "ajb": [{"a": [1, "x,y"]}, [], None],
            "ats": ["2024-01-01T00:00:00+00:00", "infinity"],
            "an": ["1.50", "NaN", "-0.001"], "ab": [True, False, None],
            "aby": ["AQ==", ""], "ae": ["happy", "so sad"],
            "af": [1.5, "NaN", "Infinity", "-Infinity", 1e300],
            "apt": [{"x": 1.0, "y": 2.0}, None], "a2": [[1, None], [3, 4]],
            "ad": ["2024-01-02", "infinity"],
        },
    ),
    (
        {"id": "2"},
        {column: None for column in COLUMNS} | {"id": 2},
    ),
    (
        {
            "id": "3", "b": "false", "i2": "0", "i4": "-2147483648",
            "i8": "-9223372036854775808", "f4": "'NaN'", "f8": "'-Infinity'", "n": "'NaN'",
            "nn": "'Infinity'", "m": "-0.01", "t": "''", "vc": "''", "bp": "''", "nm": "''",
            "by": "''", "j": "'\"str\"'", "jb": "'[]'", "d": "'infinity'",
            "ts": "'-infinity'", "tstz": "'infinity'", "tm": "'00:00:00'",
            "tmtz": "'00:00:00+00'", "iv": "'-1 day -00:00:01'", "ip": "'::1'",
            "pt": "'(0,0)'", "x": "''", "rng": "'empty'", "e": "'ünïcode'", "dm": "1",
            "ai": "'{}'", "at": "'{}'", "ajb": "'{}'", "ats": "'{}'", "an": "'{}'",
            "a2": "'[0:1][1:1]={{5},{6}}'", "af": "'{}'", "ad": "'{}'",
        },
        {
            "id": 3, "b": False, "i2": 0, "i4": -2147483648, "i8": -9223372036854775808,
            "f4": "NaN", "f8": "-Infinity", "n": "NaN", "nn": "Infinity", "m": "-$0.01",
            "t": "", "vc": "", "bp": "     ", "nm": "", "by": "", "j": "str", "jb": [],
            "u": None, "d": "infinity", "ts": "-infinity", "tstz": "infinity",
            "tm": "00:00:00", "tmtz": "00:00:00+00:00", "iv": "P-1DT-1S", "ip": "::1",
            "cd": None, "mac": None, "pt": {"x": 0.0, "y": 0.0}, "bits": None, "vb": None,
            "x": "", "lsn": None, "rng": "empty", "e": "ünïcode", "dm": 1, "ai": [],
            "at": [], "ajb": [], "ats": [], "an": [], "ab": None, "aby": None, "ae": None,
            "af": [], "apt": None, "a2": [[5], [6]], "ad": [],
        },
    ),
    (
        {
            "id": "4", "d": "'0044-03-15 BC'", "ts": "'0044-03-15 10:00:00 BC'",
            "tstz": "'0044-03-15 10:00:00+00 BC'", "ad": "'{0044-03-15 BC}'",
            "ats": "ARRAY['0044-03-15 10:00:00+00 BC'::timestamptz]",
        },
        {column: None for column in COLUMNS} | {
            "id": 4, "d": "0044-03-15 BC", "ts": "0044-03-15 10:00:00 BC",
            "tstz": "0044-03-15 10:00:00+00 BC", "ad": ["0044-03-15 BC"],
            "ats": ["0044-03-15 10:00:00+00 BC"],
        },
    ),
]


def insert_statements() -> list[str]:
    """One INSERT per row of ROWS."""
    statements = []
    for literals, _ in ROWS:
        names = ", ".join(literals)
        values = ", ".join(literals.values())
        statements.append(f"INSERT INTO types ({names}) VALUES ({values})")
    return statements


def expected_rows() -> list[dict[str, Any]]:
    return [expected for _, expected in ROWS]
