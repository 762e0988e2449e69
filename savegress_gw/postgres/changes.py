"""Replication messages → envelopes with positions; replays after a restart are dropped.

A :class:`ChangeReader` follows the stream transaction by transaction. Its position is
``(lsn, sequence, end)``: ``lsn`` is the commit LSN of the transaction being read, ``sequence``
the number of its changes and logical messages read so far (0 after Begin, last + 1 after
Commit; -1 before the first transaction), and ``end`` the ``end_lsn`` of the last transaction read completely. Restarting the
stream at ``end`` re-sends the transaction at ``lsn`` whole; every change whose
``(commit lsn, sequence)`` is <= the reader's ``threshold`` is then dropped, so what was already
handed out is not handed out twice.

``position()`` is the plain-data form (checkpointed by the core)::

    {"lsn": "0/16B3748", "sequence": 42, "end_lsn": "0/16B3700", "commit_us": 1736937000123456,
     "schemas": {"16384": [namespace, name, identity, [[column, type oid, typmod, key], ...]]}}

Schema changes go through ``on_schema_change(table, changes)``, which returns True to emit the
``DDL`` event and go on, or False to stop before the Relation message (the caller then reads the
stream again from ``end`` later, once the change is approved); it raises to fail.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import orjson

from savegress_gw.postgres.events import HEARTBEAT_PREFIX, ChangeBuilder, SchemaChange
from savegress_gw.postgres.pgoutput import (
    Begin, Commit, Delete, Insert, LogicalMessage, Origin, Relation, Truncate, TypeInfo, Update, decode,
    lsn_to_str, str_to_lsn,
)

SchemaPolicy = Callable[[str, list[SchemaChange]], bool]


class ChangeReader:
    """Builds the events of a replication stream (module docstring)."""

    def __init__(self, builder: ChangeBuilder, preserve_transactions: bool, on_schema_change: SchemaPolicy,
                 detect_schema_changes: bool = True) -> None:
        self.builder = builder
        self.preserve = preserve_transactions
        self.on_schema_change = on_schema_change
        self.detect = detect_schema_changes
        self.lsn = 0
        self.seq = 0
        self.end = 0
        self.commit_us = 0
        self.in_transaction = False
        self.threshold = (0, -1)
        """Changes at or before this ``(commit lsn, sequence)`` were handed out already."""

    # ------------------------------------------------------------------ positions

    def restore(self, position: dict[str, Any]) -> None:
        """Continue after ``position`` (from the checkpoint or ``position()``)."""
        self.lsn, self.seq = str_to_lsn(position["lsn"]), int(position["sequence"])
        self.end = str_to_lsn(position["end_lsn"])
        self.commit_us = int(position.get("commit_us", 0))
        self.threshold = (self.lsn, self.seq)
        self.in_transaction = False

    def start_at(self, lsn: int) -> None:
        """Start streaming at ``lsn`` with nothing handed out yet (a new slot, ``start_position``);
        the position is then ``(lsn, -1)``, before even a transaction committing at ``lsn``."""
        self.lsn, self.seq, self.end = lsn, -1, lsn
        self.threshold = (0, -1)
        self.in_transaction = False

    def rewind(self) -> None:
        """The stream is read again from ``end``: drop what was handed out up to here."""
        self.threshold = max(self.threshold, (self.lsn, self.seq))
        self.in_transaction = False
        self.builder.forget_stream()

    def position(self) -> dict[str, Any]:
        return {"lsn": lsn_to_str(self.lsn), "sequence": self.seq, "end_lsn": lsn_to_str(self.end),
                "commit_us": self.commit_us, "schemas": self.builder.schemas()}

    @property
    def caught_up(self) -> bool:
        """Between transactions (everything received so far was complete)."""
        return not self.in_transaction

    # ------------------------------------------------------------------ reading

    def process(self, messages: list[Any], events: list[dict[str, Any]]) -> bool:
        """Append the events of ``messages`` to ``events``; False if a schema change stopped it."""
        builder = self.builder
        threshold = self.threshold
        for message in messages:
            msg = decode(message.payload)
            kind = type(msg)
            if kind is Insert or kind is Update or kind is Delete:
                self.seq += 1
                if (self.lsn, self.seq) <= threshold:
                    continue
                if kind is Insert:
                    events.append(builder.insert(self.seq, msg))
                elif kind is Update:
                    events.append(builder.update(self.seq, msg))
                else:
                    events.append(builder.delete(self.seq, msg))
            elif kind is Begin:
                builder.begin(msg.final_lsn, msg.commit_ts_us, msg.xid)
                self.lsn, self.seq, self.in_transaction = msg.final_lsn, 0, True
                if self.preserve and (self.lsn, 0) > threshold:
                    events.append(builder.marker(0, "BEGIN"))
            elif kind is Commit:
                self.seq += 1
                if self.preserve and (self.lsn, self.seq) > threshold:
                    events.append(builder.marker(self.seq, "COMMIT"))
                self.end, self.commit_us, self.in_transaction = msg.end_lsn, msg.commit_ts_us, False
            elif kind is Relation:
                if self.detect:
                    changes = builder.changes(msg)
                    if changes:
                        if not self.on_schema_change(f"{msg.namespace}.{msg.name}", changes):
                            return False
                        builder.relation(msg)
                        events.append(builder.ddl(self.seq, msg.relid, changes))
                        continue
                builder.relation(msg)
            elif kind is TypeInfo:
                builder.type_info(msg)
            elif kind is Truncate:
                for relid in msg.relids:
                    self.seq += 1
                    if (self.lsn, self.seq) > threshold:
                        events.append(builder.truncate(self.seq, msg, relid))
            elif kind is LogicalMessage:
                if msg.transactional and self.in_transaction:
                    self.seq += 1
                    if msg.prefix == HEARTBEAT_PREFIX and (self.lsn, self.seq) > threshold:
                        self._heartbeat(msg, events)
            elif kind is Origin:
                pass
        return True

    def _heartbeat(self, msg: LogicalMessage, events: list[dict[str, Any]]) -> None:
        try:
            payload = orjson.loads(msg.content)
        except orjson.JSONDecodeError:
            return
        if isinstance(payload, dict) and payload.get("slot") == self.builder.slot:
            events.append(self.builder.heartbeat(self.seq, msg, payload, time.time_ns()))
