"""The canonical Savegress event envelope, and encoding events into a :class:`Batch`.

Envelope (``spec/reference.md`` 2.5): ``id, source, schema, table, operation, timestamp,
transaction_id, position, before, after, metadata``. Sources hand the source process plain dicts;
:func:`normalize` checks them and fills in what a client left out (``id``, ``timestamp``), and
:func:`encode` turns a list of them into the columns sinks work on.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache
import os
import time
from datetime import datetime, timezone
from typing import Any

import orjson

from savegress_gw.components import Batch

OPERATIONS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "TRUNCATE", "DDL", "BEGIN", "COMMIT", "SNAPSHOT", "HEARTBEAT"}
)
ENVELOPE_FIELDS = (
    "id", "source", "schema", "table", "operation", "timestamp", "transaction_id", "position",
    "before", "after", "metadata",
)
_ROW_FIELDS = ("before", "after")


class EnvelopeError(ValueError):
    """An event that is not a valid envelope; the message names the field and the problem."""


_ids = itertools.count(1)
_id_prefix = f"evt-{os.getpid():x}-{time.time_ns() // 1_000_000:x}-"


def new_event_id() -> str:
    """A unique event id: ``evt-<pid>-<start ms>-<counter>`` (hex), cheap enough for every event."""
    return f"{_id_prefix}{next(_ids):x}"


def now_iso() -> str:
    """The current time as ISO 8601 UTC with microseconds, the envelope's timestamp format."""
    return format_timestamp(time.time_ns())


def format_timestamp(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def timestamp_ms(value: str) -> int:
    """Unix milliseconds of an ISO 8601 timestamp (``Z`` or an offset; naive means UTC).

    The envelope's own form (``2025-01-15T10:30:00.123456Z``) takes a fast path with the minute
    cached, since it is parsed for every event; anything else goes through ``fromisoformat``.
    """
    if len(value) == 27 and _ENVELOPE_TIME.match(value) and value[17] < "6":
        return _minute_ms(value[:16]) + int(value[17:19]) * 1000 + int(value[20:23])
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


_ENVELOPE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@lru_cache(maxsize=256)
def _minute_ms(prefix: str) -> int:
    return int(datetime.fromisoformat(prefix + ":00+00:00").timestamp()) * 1000


def normalize(event: Any, default_source: str) -> dict[str, Any]:
    """Check one event against the envelope and fill in ``id``, ``timestamp`` and ``source``.

    Accepts lowercase operations and the add-ons' ``type`` as an alias of ``operation``. Raises
    :class:`EnvelopeError` for anything a sink could not deliver faithfully.
    """
    if not isinstance(event, dict):
        raise EnvelopeError(f"an event must be a JSON object, got {_json_type(event)}")
    unknown = set(event) - set(ENVELOPE_FIELDS) - {"type", "ddl_type", "ddl_command"}
    if unknown:
        raise EnvelopeError(f"unknown field(s) {', '.join(sorted(unknown))}; an event has {', '.join(ENVELOPE_FIELDS)}")
    event = dict(event)
    alias = event.pop("type", None)
    operation = event.get("operation", alias)
    if alias is not None and alias != operation:
        raise EnvelopeError(f"operation {operation!r} and type {alias!r} disagree (type is an alias of operation)")
    if not isinstance(operation, str) or operation.upper() not in OPERATIONS:
        raise EnvelopeError(f"operation {operation!r} is not one of {', '.join(sorted(OPERATIONS))}")
    event["operation"] = operation.upper()
    table = event.get("table")
    if event["operation"] not in ("BEGIN", "COMMIT", "HEARTBEAT") and (not isinstance(table, str) or not table):
        raise EnvelopeError("table is required (a non-empty string)")
    for field in _ROW_FIELDS:
        if event.get(field) is not None and not isinstance(event[field], dict):
            raise EnvelopeError(f"{field} must be an object or null, got {_json_type(event[field])}")
    if event.get("metadata") is not None and not isinstance(event["metadata"], dict):
        raise EnvelopeError(f"metadata must be an object, got {_json_type(event['metadata'])}")
    if event.get("id") is None:
        event["id"] = new_event_id()
    elif not isinstance(event["id"], str):
        event["id"] = str(event["id"])
    if event.get("timestamp") is None:
        event["timestamp"] = now_iso()
    else:
        try:
            if not isinstance(event["timestamp"], str):
                raise TypeError
            timestamp_ms(event["timestamp"])
        except (TypeError, ValueError):
            raise EnvelopeError(f"timestamp {event['timestamp']!r} is not ISO 8601") from None
    event.setdefault("source", default_source)
    return event


def message_key(event: dict[str, Any]) -> str:
    """``table:pk``: the primary key from ``metadata.primary_key`` (column names), else ``id``.

    Composite keys are joined with ``:``. An event without a usable key is keyed by its event id,
    so it still lands in exactly one lane.
    """
    row = event.get("after") or event.get("before")
    if row:
        metadata = event.get("metadata")
        columns = metadata.get("primary_key") if metadata else None
        if not columns or len(columns) == 1:
            value = row.get(columns[0] if columns else "id")
            if value is not None:
                return f"{event.get('table') or ''}:{value}"
        else:
            values = [row.get(c) for c in columns]
            if None not in values:
                return f"{event.get('table') or ''}:" + ":".join(map(str, values))
    return f"{event.get('table') or ''}:{event['id']}"


def encode(events: list[dict[str, Any]], ingest_ns: int) -> Batch:
    """Encode normalized events: JSON payloads plus the routing columns (one pass per column)."""
    stamps = [e["timestamp"] for e in events]
    millis = {stamp: timestamp_ms(stamp) for stamp in set(stamps)}  # a read batch shares few stamps
    return Batch(
        payloads=list(map(orjson.dumps, events)),
        keys=list(map(message_key, events)),
        ids=[e["id"] for e in events],
        operations=[e["operation"] for e in events],
        schemas=[e.get("schema") or "" for e in events],
        tables=[e.get("table") or "" for e in events],
        timestamps_ms=[millis[stamp] for stamp in stamps],
        ingest_ns=[ingest_ns] * len(events),
    )


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )
