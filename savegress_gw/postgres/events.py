"""pgoutput messages → canonical envelopes (``spec/reference.md`` 2.5), and schema changes.

:class:`ChangeBuilder` keeps the relation and type caches of one stream and builds the events of
one transaction at a time (``begin`` … ``commit``). Envelopes are complete (the source is
``trusted``): ``id`` is ``pg-<commit lsn hex>-<sequence>`` (the same change read twice gets the
same id), ``timestamp`` and ``transaction_id`` are the commit's, ``position`` is
``{"lsn": <commit lsn X/Y>, "sequence": n}`` where ``n`` numbers the transaction's changes and
logical messages from 1 (BEGIN is 0, COMMIT is the last + 1).

Rows follow the replica identity: INSERT ``after``; UPDATE ``before`` = the old row under FULL, the
old key when the key changed under DEFAULT/INDEX, else null; DELETE ``before`` = the old row
(FULL) or key (others). Unchanged TOAST values are never invented: they are left out of
``after`` and listed in ``metadata.unchanged_toast``, except under FULL, where ``before`` holds
them and they are copied over.

Schema changes are detected by comparing a Relation message with the cached one of the same
relation id (PostgreSQL sends Relation messages again after reconnects and many catalog
invalidations, so a message equal to the cache is no change): added columns are compatible;
dropped, renamed or retyped columns and renamed tables are breaking. The stream has no column
numbers: a dropped and an added column at the same position with the same type count as a
rename (a guess PostgreSQL's messages cannot confirm). Each change is one ``DDL``
event with ``ddl_type`` and ``metadata.changes``. The cache is plain data
(:meth:`ChangeBuilder.schemas`) so positions can carry it and a restarted source detects
changes made while it was down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from savegress_gw.envelope import format_timestamp
from savegress_gw.postgres.pgoutput import (
    Column, Delete, Insert, LogicalMessage, Relation, Truncate, TypeInfo, Update, lsn_to_str,
)
from savegress_gw.postgres.types import RowDecoder

HEARTBEAT_PREFIX = "savegress.heartbeat"


@dataclass(frozen=True)
class SchemaChange:
    """What one Relation message changed: ``kind`` (``add_column``, ``drop_column``,
    ``rename_column``, ``type_change``, ``identity_change``, ``rename_table``) and details."""

    kind: str
    detail: dict[str, Any]

    @property
    def breaking(self) -> bool:
        return self.kind not in ("add_column", "identity_change")


def diff_relation(old: Relation, new: Relation) -> list[SchemaChange]:
    """The changes from ``old`` to ``new`` (same relation id); empty when nothing changed."""
    changes: list[SchemaChange] = []
    if (old.namespace, old.name) != (new.namespace, new.name):
        changes.append(SchemaChange("rename_table", {"from": f"{old.namespace}.{old.name}",
                                                     "to": f"{new.namespace}.{new.name}"}))
    before = {c.name: (i, c) for i, c in enumerate(old.columns)}
    after = {c.name: (i, c) for i, c in enumerate(new.columns)}
    dropped = [name for name in before if name not in after]
    added = [name for name in after if name not in before]
    for name in list(dropped):
        index, column = before[name]
        twin = next((a for a in added if after[a][0] == index and _same_type(after[a][1], column)), None)
        if twin is not None:
            changes.append(SchemaChange("rename_column", {"from": name, "to": twin}))
            dropped.remove(name)
            added.remove(twin)
    changes.extend(SchemaChange("drop_column", {"column": name}) for name in dropped)
    changes.extend(SchemaChange("add_column", {"column": name, "type_oid": after[name][1].type_oid,
                                               "typmod": after[name][1].typmod}) for name in added)
    for name, (_, column) in after.items():
        if name in before and not _same_type(before[name][1], column):
            changes.append(SchemaChange("type_change", {
                "column": name, "from_type_oid": before[name][1].type_oid, "to_type_oid": column.type_oid,
                "from_typmod": before[name][1].typmod, "to_typmod": column.typmod}))
    old_keys = [c.name for c in old.columns if c.is_key]
    new_keys = [c.name for c in new.columns if c.is_key]
    if old.replica_identity != new.replica_identity or (old_keys != new_keys and not dropped and not added):
        changes.append(SchemaChange("identity_change", {"from": old.replica_identity, "to": new.replica_identity,
                                                        "key": new_keys}))
    return changes


def _same_type(a: Column, b: Column) -> bool:
    return (a.type_oid, a.typmod) == (b.type_oid, b.typmod)


def relation_to_data(relation: Relation) -> list[Any]:
    """A relation as plain JSON data (for positions)."""
    return [relation.namespace, relation.name, relation.replica_identity,
            [[c.name, c.type_oid, c.typmod, c.is_key] for c in relation.columns]]


def relation_from_data(relid: int, data: list[Any]) -> Relation:
    namespace, name, identity, columns = data
    return Relation(relid, namespace, name, identity, tuple(Column(n, o, m, bool(k)) for n, o, m, k in columns))


class _Table:
    """A cached relation with what building its events needs."""

    __slots__ = ("relation", "decoder", "schema", "name", "full", "keys", "metadata")

    def __init__(self, relation: Relation, types: dict[int, TypeInfo], database: str,
                 primary_key: list[str] | None) -> None:
        self.relation = relation
        self.decoder = RowDecoder(relation, types)
        self.schema = relation.namespace or "pg_catalog"
        self.name = relation.name
        self.full = relation.replica_identity == "f"
        # Under FULL every column is flagged as key: the catalog's primary key keys the events.
        flagged = [] if self.full else [c.name for c in relation.columns if c.is_key]
        names = {c.name for c in relation.columns}
        self.keys = [k for k in primary_key if k in names] if primary_key else flagged
        self.metadata = {"database": database, "primary_key": self.keys} if self.keys else {"database": database}


class ChangeBuilder:
    """Builds envelopes from decoded pgoutput messages (module docstring)."""

    def __init__(self, database: str, slot: str, schemas: dict[str, Any] | None = None,
                 primary_keys: dict[str, list[str]] | None = None,
                 on_schemas: Callable[[dict[str, Any]], None] | None = None) -> None:
        """``primary_keys``: ``schema.table`` → primary key columns from the catalog (keys the
        events of REPLICA IDENTITY FULL tables, whose Relation messages flag every column).
        ``on_schemas`` is called with the new cache whenever it changes."""
        self.database, self.slot = database, slot
        self.primary_keys = primary_keys or {}
        self.on_schemas = on_schemas
        self.types: dict[int, TypeInfo] = {}
        self.tables: dict[int, _Table] = {}
        self._schemas: dict[str, Any] = dict(schemas or {})
        self._known: dict[int, Relation] = {int(k): relation_from_data(int(k), v) for k, v in self._schemas.items()}
        self.xid = ""
        self.lsn = 0
        self.lsn_text = "0/0"
        self.lsn_hex = "0"
        self.timestamp = ""
        self.commit_us = 0

    # ------------------------------------------------------------------ caches

    def schemas(self) -> dict[str, Any]:
        """The relation cache as plain data; a new object after every change (positions keep it)."""
        return self._schemas

    def type_info(self, message: TypeInfo) -> None:
        self.types[message.oid] = message

    def changes(self, message: Relation) -> list[SchemaChange]:
        """The schema changes ``message`` makes against the last known version of its relation."""
        known = self._known.get(message.relid)
        return diff_relation(known, message) if known is not None else []

    def relation(self, message: Relation) -> None:
        """Cache ``message`` (the relation's schema from now on)."""
        pk = self.primary_keys.get(f"{message.namespace}.{message.name}")
        self.tables[message.relid] = _Table(message, self.types, self.database, pk)
        if self._known.get(message.relid) != message:
            self._known[message.relid] = message
            self._schemas = {**self._schemas, str(message.relid): relation_to_data(message)}
            if self.on_schemas is not None:
                self.on_schemas(self._schemas)

    def forget_stream(self) -> None:
        """A new connection: Relation and Type messages will be sent again (the known schemas stay)."""
        self.tables.clear()
        self.types.clear()

    # ------------------------------------------------------------------ transactions

    def begin(self, commit_lsn: int, commit_ts_us: int, xid: int) -> None:
        self.xid = str(xid)
        self.lsn = commit_lsn
        self.lsn_text = lsn_to_str(commit_lsn)
        self.lsn_hex = f"{commit_lsn:X}"
        self.commit_us = commit_ts_us
        self.timestamp = format_timestamp(commit_ts_us * 1000)

    def _envelope(self, seq: int, operation: str, schema: str | None, table: str | None,
                  before: Any, after: Any, metadata: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"pg-{self.lsn_hex}-{seq}", "source": "postgres", "schema": schema, "table": table,
            "operation": operation, "timestamp": self.timestamp, "transaction_id": self.xid,
            "position": {"lsn": self.lsn_text, "sequence": seq}, "before": before, "after": after,
            "metadata": metadata,
        }

    def marker(self, seq: int, operation: str) -> dict[str, Any]:
        """A ``BEGIN`` or ``COMMIT`` transaction marker."""
        return self._envelope(seq, operation, None, None, None, None, {"database": self.database})

    def insert(self, seq: int, message: Insert) -> dict[str, Any]:
        table = self._table(message.relid)
        row, toast = table.decoder.decode(message.new)
        return self._envelope(seq, "INSERT", table.schema, table.name, None, row, self._meta(table, toast))

    def update(self, seq: int, message: Update) -> dict[str, Any]:
        table = self._table(message.relid)
        after, toast = table.decoder.decode(message.new)
        before = None
        if message.old is not None:
            if message.old_kind == "O":
                before, _ = table.decoder.decode(message.old)
                for name in toast:  # FULL: the old row has the unchanged value
                    if name in before:
                        after[name] = before[name]
                toast = [name for name in toast if name not in before]
            else:
                before = table.decoder.decode_key(message.old)
        return self._envelope(seq, "UPDATE", table.schema, table.name, before, after, self._meta(table, toast))

    def delete(self, seq: int, message: Delete) -> dict[str, Any]:
        table = self._table(message.relid)
        if message.old_kind == "O":
            before, _ = table.decoder.decode(message.old)
        else:
            before = table.decoder.decode_key(message.old)
        return self._envelope(seq, "DELETE", table.schema, table.name, before, None, table.metadata)

    def truncate(self, seq: int, message: Truncate, relid: int) -> dict[str, Any]:
        table = self._table(relid)
        return self._envelope(seq, "TRUNCATE", table.schema, table.name, None, None, {
            "database": self.database, "cascade": message.cascade, "restart_identity": message.restart_identity})

    def ddl(self, seq: int, relid: int, changes: list[SchemaChange]) -> dict[str, Any]:
        table = self._table(relid)
        renamed = any(c.kind == "rename_table" for c in changes)
        event = self._envelope(seq, "DDL", table.schema, table.name, None, None, {
            "database": self.database, "breaking": any(c.breaking for c in changes),
            "changes": [{"change": c.kind, **c.detail} for c in changes],
            "columns": [c.name for c in table.relation.columns]})
        event["id"] = f"pg-{self.lsn_hex}-{seq}-ddl-{relid}"
        event["ddl_type"] = "RENAME_TABLE" if renamed and len(changes) == 1 else "ALTER_TABLE"
        return event

    def heartbeat(self, seq: int, message: LogicalMessage, payload: dict[str, Any], now_ns: int) -> dict[str, Any]:
        emitted = int(payload.get("emitted_at_ns", 0))
        return self._envelope(seq, "HEARTBEAT", None, None, None, None, {
            "database": self.database, "slot": self.slot,
            "emitted_at": format_timestamp(emitted) if emitted else None,
            "latency_ms": round((now_ns - emitted) / 1e6, 3) if emitted else None})

    def _table(self, relid: int) -> _Table:
        try:
            return self.tables[relid]
        except KeyError:
            raise ValueError(f"change for relation {relid} before its Relation message (protocol error)") from None

    @staticmethod
    def _meta(table: _Table, toast: list[str]) -> dict[str, Any]:
        if not toast:
            return table.metadata
        return {**table.metadata, "unchanged_toast": toast}
