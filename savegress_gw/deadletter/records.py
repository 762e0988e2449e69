"""The dead-letter record format: framing, body, entry ids, and the entry as read back.

Record format, little-endian: ``[magic u32 0x51444753][length u32][crc32(body) u32][body]``;
the body is a msgpack map ``{id, key, table, schema, operation, payload, encoding, reason,
error_class, attempts, first_failed_at, last_failed_at, origin, timestamp_ms}``: ``payload``
is the event's JSON envelope (bytes, compressed when ``encoding`` is not ``identity``),
``timestamp_ms`` the event time, ``first_failed_at``/``last_failed_at`` ISO 8601 UTC. A put only
sees the last failed attempt, so both are the time of the put (the parking time). An entry's
stable id is ``<segment>:<offset>``, e.g. ``dlq-00000003:4096``.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import msgpack
import orjson

from savegress_gw.components import Batch
from savegress_gw.compression import decompress
from savegress_gw.envelope import timestamp_ms

MAGIC = 0x51444753
"""First four bytes of every record (``SGDQ`` read as little-endian bytes)."""
MAGIC_BYTES = struct.pack("<I", MAGIC)
HEADER = struct.Struct("<III")
"""magic, body length, crc32 of the body."""
_ENTRY_ID = re.compile(r"(dlq-\d{8,}):(\d+)")

_ERROR_CLASS = re.compile(
    r"(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Timeout|Exceeded|Refused|Failure)"  # exception names
    r"|_?[A-Z][A-Z0-9_]{2,}"  # error codes: MSG_SIZE_TOO_LARGE, _MSG_TIMED_OUT
    r"|(?:HTTP ?)?[1-5]\d\d"  # HTTP status codes
)


def error_class(reason: str) -> str:
    """The part of ``reason`` before ``:`` when it looks like an exception name, error code or
    HTTP status (``KafkaException``, ``MSG_SIZE_TOO_LARGE``, ``HTTP 400``), else ``""``."""
    head, colon, _ = reason.partition(":")
    head = head.strip()
    return head if colon and _ERROR_CLASS.fullmatch(head) else ""


def segment_name(number: int) -> str:
    """``dlq-00000007``: the file stem of segment ``number``, and the first half of its entry ids."""
    return f"dlq-{number:08d}"


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    """``(segment number, offset)`` of an entry id; ValueError when it is not one."""
    match = _ENTRY_ID.fullmatch(entry_id)
    if match is None:
        raise ValueError(f"{entry_id!r} is not a dead-letter entry id (expected dlq-<segment>:<offset>)")
    return int(match[1][4:]), int(match[2])


def encode_record(body: dict[str, Any]) -> bytes:
    """One framed record: header + msgpack ``body``."""
    packed = msgpack.packb(body, use_bin_type=True)
    return HEADER.pack(MAGIC, len(packed), zlib.crc32(packed)) + packed


def encode_batch(batch: Batch, payloads: Sequence[bytes], encodings: Sequence[str], reason: str,
                 attempts: int, origin: str, parked: str) -> bytes:
    """The records of every event of ``batch``, back to back: ``payloads`` and ``encodings`` are
    the stored payloads (one per event), ``parked`` the parking time (ISO 8601 UTC)."""
    kind = error_class(reason)
    return b"".join(encode_record({
        "id": batch.ids[i], "key": batch.keys[i], "table": batch.tables[i], "schema": batch.schemas[i],
        "operation": batch.operations[i], "payload": payloads[i], "encoding": encodings[i],
        "reason": reason, "error_class": kind, "attempts": attempts,
        "first_failed_at": parked, "last_failed_at": parked, "origin": origin,
        "timestamp_ms": batch.timestamps_ms[i],
    }) for i in range(len(batch)))


def decode_record(body: bytes) -> dict[str, Any] | None:
    """The record map of a CRC-valid ``body``, or None if it is not one."""
    try:
        record = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("payload"), bytes) else None


def parked_ms(body: bytes) -> int:
    """When the record was parked (``last_failed_at``), Unix ms; 0 when unreadable (evicted first)."""
    record = decode_record(body)
    try:
        return timestamp_ms(record["last_failed_at"]) if record else 0
    except (KeyError, TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class DeadLetter:
    """One parked event, as stored (``payload`` decompressed on first access)."""

    id: str
    """Entry id, ``<segment>:<offset>``."""
    event_id: str
    key: str
    table: str
    schema: str
    operation: str
    stored: bytes = field(repr=False)
    """The payload as stored (compressed unless ``encoding`` is ``identity``)."""
    encoding: str
    reason: str
    error_class: str
    attempts: int
    first_failed_at: str
    last_failed_at: str
    origin: str
    timestamp_ms: int
    where: dict[str, Any] = field(default_factory=dict)
    """Where the entry is stored when the id does not say it all (Kafka: topic, partition, offset,
    original topic); shown by ``dlq show``."""

    @classmethod
    def from_record(cls, entry_id: str, record: dict[str, Any]) -> "DeadLetter":
        """The entry ``entry_id`` of a decoded record map; KeyError when a field is missing."""
        return cls(entry_id, record["id"], record["key"], record["table"], record["schema"], record["operation"],
                   record["payload"], record["encoding"], record["reason"], record["error_class"], record["attempts"],
                   record["first_failed_at"], record["last_failed_at"], record["origin"], record["timestamp_ms"])

    @cached_property
    def payload(self) -> bytes:
        """The event's JSON envelope; ValueError when the stored bytes do not decompress."""
        return decompress(self.stored, self.encoding)

    @property
    def parked_ms(self) -> int:
        """When the entry was parked (``last_failed_at``), Unix milliseconds."""
        return timestamp_ms(self.last_failed_at)

    def to_dict(self) -> dict[str, Any]:
        """Every field, with the event as parsed JSON under ``event`` (for ``dlq show``)."""
        try:
            event: Any = orjson.loads(self.payload)
        except ValueError:
            event = self.payload.decode("utf-8", "replace")
        fields = {name: getattr(self, name) for name in (
            "id", "event_id", "key", "table", "schema", "operation", "reason", "error_class", "attempts",
            "first_failed_at", "last_failed_at", "origin", "timestamp_ms", "encoding")}
        return fields | self.where | {"event": event}
