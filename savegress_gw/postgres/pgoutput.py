"""Decoder of PostgreSQL's ``pgoutput`` logical replication messages, protocol version 1.

``decode(payload)`` turns one XLogData payload (psycopg2's ``ReplicationMessage.payload``) into
one of the frozen message classes below. Supported: Begin ``B``, Commit ``C``, Origin ``O``,
Relation ``R``, Type ``Y``, Insert ``I``, Update ``U``, Delete ``D``, Truncate ``T`` and logical
Message ``M`` (needs ``messages 'true'``). Streaming (``S E c A``) and two-phase (``b P p K r``)
messages only exist with ``proto_version`` 2+ and options this decoder does not request; they,
binary tuple values (``binary 'true'``) and any unknown byte raise ``ValueError`` naming the byte,
as does a payload that ends early.

Contracts:

* LSNs and xids are unsigned ints; ``lsn_to_str``/``str_to_lsn`` convert LSNs to and from
  PostgreSQL's ``X/Y`` form.
* Timestamps (``commit_ts_us``) are **microseconds since the Unix epoch** (the wire carries
  microseconds since 2000-01-01; the offset is added here).
* ``TupleData`` is a tuple with one entry per published column, in relation order: ``None`` for
  SQL NULL (``n``; in a key tuple ``K`` also "not part of the key"), ``UNCHANGED_TOAST`` for an
  unchanged out-of-line value that was not sent (``u``), otherwise the value's text form (``t``),
  decoded as UTF-8 (the connection's ``client_encoding``).
* Names (relation, namespace, column, type, origin, prefix) are decoded as UTF-8. A Relation's
  ``namespace`` is ``""`` for ``pg_catalog``, as on the wire.

This is the hot path of the PostgreSQL source: fixed layouts are precompiled ``struct.Struct``
objects read with ``unpack_from`` in place; nothing is logged.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Union

__all__ = [
    "Begin",
    "Column",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "Relation",
    "Truncate",
    "TupleData",
    "TypeInfo",
    "UNCHANGED_TOAST",
    "Update",
    "decode",
    "lsn_to_str",
    "str_to_lsn",
]

PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000  # 2000-01-01 minus 1970-01-01, in microseconds

TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2
MESSAGE_TRANSACTIONAL: Final = 1


class _UnchangedToast:
    """Type of the ``UNCHANGED_TOAST`` singleton."""

    __slots__ = ()
    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _UnchangedToast()
"""A TupleData entry whose value (an unchanged out-of-line TOAST value) was not sent."""

TupleData = tuple[Union[str, None, _UnchangedToast], ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    """LSN of the commit record (equals the Commit's ``commit_lsn``)."""
    commit_ts_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    """LSN just past the commit record: what to confirm once the transaction is delivered."""
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    """-1 when the type has none."""
    is_key: bool
    """Part of the replica identity (PK, USING INDEX columns, or every column under FULL)."""


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str
    """``d`` default, ``n`` nothing, ``f`` full, ``i`` index."""
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str
    """For a domain, the name of its base type (e.g. ``int4``, namespace ``""``)."""


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    old_kind: str | None
    """``K`` (old key only: other entries are None), ``O`` (whole old row, REPLICA IDENTITY
    FULL) or None (no old tuple: the key did not change)."""
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old_kind: str
    """``K`` or ``O``, as for Update."""
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Union[
    Begin, Commit, Origin, Relation, TypeInfo, Insert, Update, Delete, Truncate, LogicalMessage
]

_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_REL_COL = struct.Struct(">Ii")
_TRUNCATE_HEAD = struct.Struct(">iB")
_MESSAGE_HEAD = struct.Struct(">BQ")

_N, _U, _T, _B = ord("n"), ord("u"), ord("t"), ord("b")
_KIND_K, _KIND_O, _KIND_N = ord("K"), ord("O"), ord("N")

_UNSUPPORTED = {
    "S": "Stream Start",
    "E": "Stream Stop",
    "c": "Stream Commit",
    "A": "Stream Abort",
    "b": "Begin Prepare",
    "P": "Prepare",
    "p": "Stream Prepare",
    "K": "Commit Prepared",
    "r": "Rollback Prepared",
}


def lsn_to_str(lsn: int) -> str:
    """``0x16B3748`` → ``"0/16B3748"`` (PostgreSQL's format: two upper-case hex halves)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def str_to_lsn(text: str) -> int:
    """``"0/16B3748"`` → ``0x16B3748``; ``ValueError`` for anything else."""
    high, sep, low = text.strip().partition("/")
    try:
        if not sep or not high or not low or len(high) > 8 or len(low) > 8:
            raise ValueError
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"not an LSN (expected X/Y in hex): {text!r}") from None


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated UTF-8 string at ``pos``; returns it and the position after the NUL."""
    end = buf.find(0, pos)
    if end < 0:
        raise ValueError(f"unterminated string at byte {pos}")
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[TupleData, int]:
    (count,) = _U16.unpack_from(buf, pos)
    pos += 2
    values: list[str | None | _UnchangedToast] = []
    append = values.append
    unpack_len = _I32.unpack_from
    for _ in range(count):
        kind = buf[pos]
        pos += 1
        if kind == _T:
            (length,) = unpack_len(buf, pos)
            pos += 4
            end = pos + length
            append(buf[pos:end].decode())
            pos = end
        elif kind == _N:
            append(None)
        elif kind == _U:
            append(UNCHANGED_TOAST)
        elif kind == _B:
            raise ValueError("binary tuple values ('b') are not supported: use binary 'false'")
        else:
            raise ValueError(f"unknown tuple value kind {chr(kind)!r} at byte {pos - 1}")
    return tuple(values), pos


def _begin(buf: bytes) -> Begin:
    final_lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(final_lsn, ts + PG_EPOCH_OFFSET_US, xid)


def _commit(buf: bytes) -> Commit:
    flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, 1)
    return Commit(flags, commit_lsn, end_lsn, ts + PG_EPOCH_OFFSET_US)


def _origin(buf: bytes) -> Origin:
    (lsn,) = _U64.unpack_from(buf, 1)
    name, _ = _string(buf, 9)
    return Origin(lsn, name)


def _relation(buf: bytes) -> Relation:
    (relid,) = _U32.unpack_from(buf, 1)
    namespace, pos = _string(buf, 5)
    name, pos = _string(buf, pos)
    replica_identity = chr(buf[pos])
    (count,) = _U16.unpack_from(buf, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = buf[pos]
        column_name, pos = _string(buf, pos + 1)
        type_oid, typmod = _REL_COL.unpack_from(buf, pos)
        pos += 8
        columns.append(Column(column_name, type_oid, typmod, bool(flags & 1)))
    return Relation(relid, namespace, name, replica_identity, tuple(columns))


def _type(buf: bytes) -> TypeInfo:
    (oid,) = _U32.unpack_from(buf, 1)
    namespace, pos = _string(buf, 5)
    name, _ = _string(buf, pos)
    return TypeInfo(oid, namespace, name)


def _insert(buf: bytes) -> Insert:
    (relid,) = _U32.unpack_from(buf, 1)
    if buf[5] != _KIND_N:
        raise ValueError(f"Insert: expected 'N' at byte 5, got {chr(buf[5])!r}")
    new, _ = _tuple(buf, 6)
    return Insert(relid, new)


def _update(buf: bytes) -> Update:
    (relid,) = _U32.unpack_from(buf, 1)
    kind = buf[5]
    old_kind: str | None = None
    old: TupleData | None = None
    pos = 6
    if kind == _KIND_K or kind == _KIND_O:
        old_kind = chr(kind)
        old, pos = _tuple(buf, 6)
        kind = buf[pos]
        pos += 1
    if kind != _KIND_N:
        raise ValueError(f"Update: expected 'N' at byte {pos - 1}, got {chr(kind)!r}")
    new, _ = _tuple(buf, pos)
    return Update(relid, old_kind, old, new)


def _delete(buf: bytes) -> Delete:
    (relid,) = _U32.unpack_from(buf, 1)
    kind = buf[5]
    if kind != _KIND_K and kind != _KIND_O:
        raise ValueError(f"Delete: expected 'K' or 'O' at byte 5, got {chr(kind)!r}")
    old, _ = _tuple(buf, 6)
    return Delete(relid, chr(kind), old)


def _truncate(buf: bytes) -> Truncate:
    count, options = _TRUNCATE_HEAD.unpack_from(buf, 1)
    relids = struct.unpack_from(f">{count}I", buf, 6)
    return Truncate(
        relids, bool(options & TRUNCATE_CASCADE), bool(options & TRUNCATE_RESTART_IDENTITY)
    )


def _message(buf: bytes) -> LogicalMessage:
    flags, lsn = _MESSAGE_HEAD.unpack_from(buf, 1)
    prefix, pos = _string(buf, 10)
    (length,) = _I32.unpack_from(buf, pos)
    pos += 4
    content = buf[pos : pos + length]
    if len(content) != length:
        raise ValueError(f"Message: content of {length} bytes truncated to {len(content)}")
    return LogicalMessage(bool(flags & MESSAGE_TRANSACTIONAL), lsn, prefix, content)


_DECODERS: dict[int, Callable[[bytes], Message]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}


def decode(payload: bytes) -> Message:
    """Decode one pgoutput message (see the module docstring); ``ValueError`` if it cannot."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    if not payload:
        raise ValueError("empty pgoutput message")
    try:
        return _DECODERS[payload[0]](payload)
    except KeyError:
        byte = chr(payload[0])
        name = _UNSUPPORTED.get(byte)
        if name:
            raise ValueError(
                f"pgoutput message {byte!r} ({name}) is not supported with proto_version 1 "
                "(streaming and two-phase must stay off)"
            ) from None
        raise ValueError(f"unknown pgoutput message type {byte!r}") from None
    except (struct.error, IndexError) as exc:
        raise ValueError(
            f"truncated or malformed pgoutput message {chr(payload[0])!r} "
            f"({len(payload)} bytes): {exc}"
        ) from None
