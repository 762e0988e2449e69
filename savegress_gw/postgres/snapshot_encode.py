"""SNAPSHOT events of one table written straight into the canonical JSON envelope (the encoded
fast path of ``SourceBatch.encoded``).

:class:`SnapshotEncoder` keeps one table's envelope as three byte strings around two holes, the
event id and the row, cut out of ``orjson.dumps`` of the envelope with sentinel values (PostgreSQL
names cannot hold the NUL character the sentinels contain). ``encode(rows, ids)`` fills the holes
per row with ``orjson.dumps(id)`` and ``orjson.dumps(row)``: each payload is byte for byte what
``orjson.dumps`` writes for the envelope dict (``savegress_gw.envelope.encode``), and each key is
``envelope.message_key`` of it, but no envelope dict is built and serialized per row.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from savegress_gw.components import Batch
from savegress_gw.envelope import message_key, timestamp_ms

_ID, _ROW = "\x00id", "\x00row"


class SnapshotEncoder:
    """The SNAPSHOT envelope of ``schema.table``: ``before`` null, ``after`` the row, the given
    ``timestamp``, ``position`` and ``metadata``, no transaction."""

    def __init__(self, schema: str, table: str, timestamp: str, position: dict[str, Any],
                 metadata: dict[str, Any]) -> None:
        self.schema, self.table, self.metadata = schema, table, metadata
        sample = orjson.dumps({"id": _ID, "source": "postgres", "schema": schema, "table": table,
                               "operation": "SNAPSHOT", "timestamp": timestamp, "transaction_id": None,
                               "position": position, "before": None, "after": _ROW, "metadata": metadata})
        self._head, rest = sample.split(orjson.dumps(_ID))
        self._middle, self._tail = rest.split(orjson.dumps(_ROW))
        self._millis = timestamp_ms(timestamp)

    def encode(self, rows: list[dict[str, Any]], ids: list[str]) -> Batch:
        """``rows`` with their event ``ids`` as encoded columns (``ingest_ns`` is now)."""
        head, middle, tail, dumps = self._head, self._middle, self._tail, orjson.dumps
        payloads = [b"".join((head, dumps(event_id), middle, dumps(row), tail)) for row, event_id in zip(rows, ids)]
        table, metadata = self.table, self.metadata
        keys = [message_key({"table": table, "after": row, "metadata": metadata, "id": event_id})
                for row, event_id in zip(rows, ids)]
        n = len(rows)
        return Batch(payloads, keys, list(ids), ["SNAPSHOT"] * n, [self.schema] * n, [table] * n,
                     [self._millis] * n, [time.time_ns()] * n)
