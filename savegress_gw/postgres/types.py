"""PostgreSQL text-format values → JSON-ready Python values (reference.md 2.6).

The text forms are the ones produced under ``connection.session_options()`` (DateStyle ISO,
TimeZone UTC, IntervalStyle iso_8601, bytea_output hex, UTF8); the replication stream and the
snapshot reader use the same settings and the same converters, so a row reads identically from
both. The mapping:

=====================================  ==========================================================
type                                   JSON value
=====================================  ==========================================================
bool                                   true / false
int2, int4, int8, oid, xid, cid        number (int8 max included; beyond 2^53 JS readers round)
float4, float8                         number; ``NaN``, ``Infinity``, ``-Infinity`` as those
                                       strings (JSON has no such numbers)
numeric, money                         string, exactly as PostgreSQL prints it (scale kept;
                                       ``NaN``/``Infinity`` too)
bytea                                  base64 string (standard alphabet, padded)
json, jsonb                            the parsed value (object, array, …); numbers parse as
                                       int/float (a number beyond a double stays unparsed: the
                                       whole document is then kept as its text)
timestamp                              ``2025-01-15T10:30:00[.ffffff]Z`` (naive, read as UTC)
timestamptz                            ``2025-01-15T10:30:00[.ffffff]+00:00`` (sessions run in UTC)
date                                   ``2025-01-15``
time                                   ``10:30:00[.ffffff]``
timetz                                 ``10:30:00+05:30`` (``+HH`` offsets get ``:00``)
interval                               ISO 8601 duration, ``P1Y2M3DT4H5M6.7S``
infinity / BC dates and timestamps     PostgreSQL's text unchanged (``infinity``, ``-infinity``,
                                       ``0044-03-15 BC``, ``0044-03-15 10:00:00 BC``)
point                                  ``{"x": 1.5, "y": -2.0}``
arrays (any dimension, any bounds)     nested lists, elements converted by their element type,
                                       ``NULL`` → null; a ``[lo:hi]=`` prefix is dropped
uuid, text, varchar, bpchar, name,     string, as PostgreSQL prints it (bpchar padding kept)
inet, cidr, macaddr, bit, xml,
ranges, tsvector, …, unknown types
enum                                   its label (string)
domain                                 as its base type (from the relation's Type message)
=====================================  ==========================================================

Entry points: ``converter_for(type_oid, types)`` returns a ``str → value`` function, and
``RowDecoder`` (built once per Relation message) turns a TupleData into a row dict.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from savegress_gw.postgres.pgoutput import UNCHANGED_TOAST, Relation, TupleData, TypeInfo

Converter = Callable[[str], Any]

# Built-in scalar types whose converter is not "keep the text" (pg_type, stable across versions).
BUILTIN_TYPE_NAMES: dict[int, str] = {
    16: "bool", 17: "bytea", 20: "int8", 21: "int2", 23: "int4", 26: "oid", 28: "xid", 29: "cid",
    114: "json", 600: "point", 700: "float4", 701: "float8", 1114: "timestamp",
    1184: "timestamptz", 1266: "timetz", 3802: "jsonb",
}

# Built-in array type OID → element type OID (pg_type.typelem of every pg_catalog array type).
BUILTIN_ARRAY_ELEMENTS: dict[int, int] = {
    143: 142, 199: 114, 271: 5069, 629: 628, 651: 650, 719: 718, 775: 774, 791: 790,
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1005: 21, 1006: 22, 1007: 23, 1008: 24, 1009: 25,
    1010: 27, 1011: 28, 1012: 29, 1013: 30, 1014: 1042, 1015: 1043, 1016: 20, 1017: 600,
    1018: 601, 1019: 602, 1020: 603, 1021: 700, 1022: 701, 1027: 604, 1028: 26, 1034: 1033,
    1040: 829, 1041: 869, 1115: 1114, 1182: 1082, 1183: 1083, 1185: 1184, 1187: 1186,
    1231: 1700, 1263: 2275, 1270: 1266, 1561: 1560, 1563: 1562, 2201: 1790, 2207: 2202,
    2208: 2203, 2209: 2204, 2210: 2205, 2211: 2206, 2949: 2970, 2951: 2950, 3221: 3220,
    3643: 3614, 3644: 3642, 3645: 3615, 3735: 3734, 3770: 3769, 3807: 3802, 3905: 3904,
    3907: 3906, 3909: 3908, 3911: 3910, 3913: 3912, 3927: 3926, 4073: 4072, 4090: 4089,
    4097: 4096, 4192: 4191, 5039: 5038, 6150: 4451, 6151: 4532, 6152: 4533, 6153: 4534,
    6155: 4535, 6157: 4536,
}
BOX_OID = 603  # the only built-in type whose array delimiter is ';'

FLOAT_SPECIALS = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


def _text(value: str) -> str:
    return value


def _bool(value: str) -> bool:
    return value == "t"


def _float(value: str) -> float | str:
    special = FLOAT_SPECIALS.get(value)
    return special if special is not None else float(value)


def _bytea(value: str) -> str:
    if not value.startswith("\\x"):
        raise ValueError("bytea value is not in hex format: the session needs bytea_output=hex")
    return base64.b64encode(binascii.unhexlify(value[2:])).decode("ascii")


def _json(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value  # valid in PostgreSQL, beyond what a double holds (e.g. 1e400): keep text


def _is_special_datetime(value: str) -> bool:
    return value[-1] == "y" or value.endswith(" BC")  # infinity, -infinity, or a BC date


def _timestamp(value: str) -> str:
    if _is_special_datetime(value):
        return value
    return f"{value[:10]}T{value[11:]}Z"


def _timestamptz(value: str) -> str:
    if _is_special_datetime(value):
        return value
    text = f"{value[:10]}T{value[11:]}"
    return text + ":00" if text[-3] in "+-" else text


def _timetz(value: str) -> str:
    return value + ":00" if value[-3] in "+-" else value


def _point(value: str) -> dict[str, float | str]:
    x, _, y = value[1:-1].partition(",")
    return {"x": _float(x), "y": _float(y)}


SCALAR_CONVERTERS: dict[str, Converter] = {
    "bool": _bool,
    "int2": int,
    "int4": int,
    "int8": int,
    "oid": int,
    "xid": int,
    "cid": int,
    "float4": _float,
    "float8": _float,
    "bytea": _bytea,
    "json": _json,
    "jsonb": _json,
    "timestamp": _timestamp,
    "timestamptz": _timestamptz,
    "timetz": _timetz,
    "point": _point,
}


# --------------------------------------------------------------------------- arrays


def parse_array(text: str, convert: Converter = _text, delimiter: str = ",") -> list[Any]:
    """PostgreSQL's array text form → nested lists; elements through ``convert``, NULL → None.

    Handles any dimension, a ``[lo:hi]=`` bounds prefix, quoted elements with backslash
    escapes, and ``"NULL"`` (the string) versus ``NULL``. ``ValueError`` if malformed.
    """
    if text.startswith("["):
        text = text[text.index("=") + 1 :]
    if '"' not in text and "\\" not in text and text.rfind("{") <= 0:  # flat, nothing quoted
        if text[:1] != "{" or text.find("}") != len(text) - 1:
            raise ValueError(f"malformed array literal: {text!r}")
        if len(text) == 2:
            return []
        # PostgreSQL quotes elements with spaces, so unquoted ones need no stripping
        items: list[Any] = text[1:-1].split(delimiter)
        if convert is _text:
            if "NULL" not in items:
                return items
            return [None if item == "NULL" else item for item in items]
        return [None if item == "NULL" else convert(item) for item in items]
    return _parse_nested(text, convert, delimiter)


def _parse_nested(text: str, convert: Converter, delimiter: str) -> list[Any]:
    stack: list[list[Any]] = []
    result: list[Any] | None = None
    pos, length = 0, len(text)
    while pos < length:
        char = text[pos]
        if char == "{" and result is None:
            stack.append([])
            pos += 1
        elif char == "}":
            if not stack:
                raise ValueError(f"malformed array literal (unbalanced '}}'): {text!r}")
            done = stack.pop()
            if stack:
                stack[-1].append(done)
            else:
                result = done
            pos += 1
        elif char.isspace() or (char == delimiter and stack):
            pos += 1
        elif not stack or result is not None:
            raise ValueError(f"malformed array literal at {pos}: {text!r}")
        elif char == '"':
            chars: list[str] = []
            pos += 1
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                chars.append(text[pos])
                pos += 1
            stack[-1].append(convert("".join(chars)))
            pos += 1
        else:
            start = pos
            while pos < length and text[pos] not in "{}" and text[pos] != delimiter:
                pos += 1
            item = text[start:pos].strip()
            stack[-1].append(None if item.upper() == "NULL" else convert(item))
    if result is None or stack:
        raise ValueError(f"malformed array literal: {text!r}")
    return result


def _array_converter(element: Converter, delimiter: str) -> Converter:
    def convert(value: str) -> list[Any]:
        return parse_array(value, element, delimiter)

    return convert


# --------------------------------------------------------------------------- lookup


def converter_for(type_oid: int, types: Mapping[int, TypeInfo] | None = None) -> Converter:
    """The converter for values of ``type_oid``.

    Built-in types are known by OID. Others (OID ≥ 10000) are looked up in ``types``, the Type
    messages received so far: a domain's Type names its base type, an enum's its own name
    (→ text), a user array ``_name`` converts its elements as ``name``. Anything unknown keeps
    its text.
    """
    element_oid = BUILTIN_ARRAY_ELEMENTS.get(type_oid)
    if element_oid is not None:
        delimiter = ";" if element_oid == BOX_OID else ","
        return _array_converter(converter_for(element_oid, types), delimiter)
    name = BUILTIN_TYPE_NAMES.get(type_oid)
    if name is None and types is not None and type_oid in types:
        info = types[type_oid]
        if info.name.startswith("_"):
            return _array_converter(SCALAR_CONVERTERS.get(info.name[1:], _text), ",")
        if info.namespace in ("", "pg_catalog"):
            name = info.name
    return SCALAR_CONVERTERS.get(name, _text) if name is not None else _text


class RowDecoder:
    """Converts TupleData of one relation into rows; built once per Relation message.

    ``decode(values)`` → ``(row, unchanged_toast)``: ``row`` maps column name → JSON-ready value
    (SQL NULL → None) for every column except those whose value is ``UNCHANGED_TOAST``, which are
    omitted and listed in ``unchanged_toast`` (never reported as null). ``decode_key(values)``
    keeps only the replica identity columns (for ``K`` tuples, whose other entries are not NULL
    but unknown). A value that fails to convert raises ``ValueError`` naming table and column.
    """

    __slots__ = ("relation", "names", "converters", "key_indexes", "_typed")

    def __init__(self, relation: Relation, types: Mapping[int, TypeInfo] | None = None) -> None:
        self.relation = relation
        self.names: tuple[str, ...] = tuple(column.name for column in relation.columns)
        self.converters: tuple[Converter, ...] = tuple(
            converter_for(column.type_oid, types) for column in relation.columns
        )
        self.key_indexes: tuple[int, ...] = tuple(
            index for index, column in enumerate(relation.columns) if column.is_key
        )
        # the columns whose text is not already the JSON value
        self._typed: tuple[tuple[int, str, Converter], ...] = tuple(
            (index, name, convert)
            for index, (name, convert) in enumerate(zip(self.names, self.converters))
            if convert is not _text
        )

    def decode(self, values: TupleData) -> tuple[dict[str, Any], list[str]]:
        if len(values) != len(self.names):
            self._check_width(values)
        unchanged: list[str] = []
        try:
            if UNCHANGED_TOAST in values:
                row: dict[str, Any] = {}
                for name, convert, value in zip(self.names, self.converters, values):
                    if value is None:
                        row[name] = None
                    elif value is UNCHANGED_TOAST:
                        unchanged.append(name)
                    else:
                        row[name] = convert(value)  # type: ignore[arg-type]
                return row, unchanged
            row = dict(zip(self.names, values))
            for index, name, convert in self._typed:
                value = values[index]
                if value is not None:
                    row[name] = convert(value)  # type: ignore[arg-type]
        except (ValueError, TypeError, IndexError) as exc:
            raise self._conversion_error(values, exc) from exc
        return row, unchanged

    def decode_complete(self, values: Sequence[str | None]) -> dict[str, Any]:
        """``decode`` for values known to hold no ``UNCHANGED_TOAST`` (snapshot rows, Insert
        tuples, ``O`` old tuples): the row dict alone, a little faster."""
        if len(values) != len(self.names):
            self._check_width(values)  # type: ignore[arg-type]
        row = dict(zip(self.names, values))
        try:
            for index, name, convert in self._typed:
                value = values[index]
                if value is not None:
                    row[name] = convert(value)
        except (ValueError, TypeError, IndexError) as exc:
            raise self._conversion_error(values, exc) from exc
        return row

    def decode_key(self, values: TupleData) -> dict[str, Any]:
        self._check_width(values)
        row: dict[str, Any] = {}
        try:
            for index in self.key_indexes:
                value = values[index]
                if value is None:
                    row[self.names[index]] = None
                elif value is not UNCHANGED_TOAST:
                    row[self.names[index]] = self.converters[index](value)  # type: ignore[arg-type]
        except (ValueError, TypeError, IndexError) as exc:
            raise self._conversion_error(values, exc) from exc
        return row

    def _check_width(self, values: TupleData) -> None:
        if len(values) != len(self.names):
            raise ValueError(
                f"{self._table()}: tuple has {len(values)} values but the relation "
                f"{len(self.names)} columns"
            )

    def _table(self) -> str:
        return f"{self.relation.namespace or 'pg_catalog'}.{self.relation.name}"

    def _conversion_error(self, values: Iterable[Any], exc: Exception) -> ValueError:
        for name, convert, value, column in zip(
            self.names, self.converters, values, self.relation.columns
        ):
            if value is None or value is UNCHANGED_TOAST:
                continue
            try:
                convert(value)
            except (ValueError, TypeError, IndexError) as column_exc:
                return ValueError(
                    f"{self._table()}.{name} (type oid {column.type_oid}): cannot convert "
                    f"{value[:80]!r}: {column_exc}"
                )
        return ValueError(f"{self._table()}: {exc}")
