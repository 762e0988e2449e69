"""The consistent initial snapshot: read tables as of a replication slot's exported snapshot.

``SnapshotReader(dsn, snapshot_name)`` opens one connection with the shared session settings
(``connection.connect_kwargs``) and runs ``BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
SET TRANSACTION SNAPSHOT '<name>'`` with ``statement_timeout`` and
``idle_in_transaction_session_timeout`` set to 0 for the transaction. Every table read then sees
exactly the rows committed before the slot's consistent point, whatever is written meanwhile.
The snapshot must still be importable: the exporting replication connection has run no other
command and is open (``SnapshotError`` otherwise). ``snapshot_name=None`` reads a fresh
REPEATABLE READ snapshot instead (for resuming after the exported one is gone: rows then reflect
a later state, which the stream from the slot's consistent point converges).

``iter_table((schema, name), after_pk=None, batch_size=10000, condition=None)`` yields batches
(lists) of ``(row, pk)``: ``row`` maps column → JSON-ready value through the converters of the
same ``types.RowDecoder`` the stream uses, applied line by line by ``copy_rows.rows_converter``
(values are fetched with ``COPY … TO STDOUT`` in text format, i.e. by each type's output
function, exactly as the walsender prints them); ``pk`` is the tuple of the primary key
columns' text forms. Rows come in primary key order, each batch is one ``COPY (SELECT … WHERE
(pk) > (after) ORDER BY pk LIMIT batch_size)``, so a reader restarted with the last ``pk`` it
handed out continues right after it. ``condition`` (a SQL boolean expression over the row, as in
a publication's row filter) restricts the rows read: ``WHERE (condition) AND (pk) > (after)``, so
the snapshot holds exactly the rows the publication's ``WHERE`` lets through. A table without a
primary key is ordered by its replica identity index if it has one, else read unordered with ``pk == ()`` in a single COPY held in
memory (and cannot be resumed: ``after_pk`` raises ``ValueError``). Generated columns are
skipped, as pgoutput skips them. While a batch is handed out, the next one is already being
fetched on a helper thread (the connection is used by one thread at a time).

One reader is one connection and reads sequentially; several readers may import the same
snapshot to read tables in parallel (``snapshot_load`` and ``snapshot_proc``). The garbage
collector pause while a batch is converted is shared by the readers of one process.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql

from savegress_gw.postgres.connection import connect_kwargs
from savegress_gw.postgres.copy_rows import rows_converter
from savegress_gw.postgres.pgoutput import Column, Relation, TypeInfo
from savegress_gw.postgres.types import RowDecoder

TableName = tuple[str, str]
Batch = list[tuple[dict[str, Any], tuple[str, ...]]]

DEFAULT_BATCH_SIZE = 10_000

_COLUMNS_SQL = """
SELECT c.oid, c.relreplident, a.attnum, a.attname, a.atttypid, a.atttypmod,
       format_type(a.atttypid, a.atttypmod)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = ''
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
ORDER BY a.attnum
"""

# The primary key and the replica identity index, with their columns in index order.
_KEYS_SQL = """
SELECT indisprimary, indisreplident, indkey::int2[] FROM pg_index
WHERE indrelid = %s AND (indisprimary OR indisreplident)
"""

# What a pgoutput Type message says for a non-built-in type: the base type (through domains),
# its namespace ("" for pg_catalog) and name.
_TYPES_SQL = """
WITH RECURSIVE base(oid, cur) AS (
    SELECT t.oid, t.oid FROM pg_type t WHERE t.oid = ANY(%s)
    UNION ALL
    SELECT b.oid, t.typbasetype FROM base b JOIN pg_type t ON t.oid = b.cur WHERE t.typtype = 'd'
)
SELECT b.oid, CASE WHEN n.nspname = 'pg_catalog' THEN '' ELSE n.nspname END, t.typname
FROM base b
JOIN pg_type t ON t.oid = b.cur AND t.typtype <> 'd'
JOIN pg_namespace n ON n.oid = t.typnamespace
"""

FIRST_NON_BUILTIN_OID = 10_000  # pgoutput sends Type messages for OIDs from here on

_COPY_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "v": "\v"}
_COPY_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_COPY_NULL = "\\N"


class SnapshotError(RuntimeError):
    """The snapshot could not be imported or a table could not be read; the message says which."""


@dataclass(frozen=True)
class TablePlan:
    """How one table is read: its Relation (as the stream would describe it), the ordering key
    (primary key, else replica identity index; empty if neither) with its columns' SQL types and
    positions, and the row decoder."""

    relation: Relation
    key_columns: tuple[str, ...]
    key_types: tuple[str, ...]
    key_indexes: tuple[int, ...]
    decoder: RowDecoder


class _Chunks:
    """A file-like sink for ``copy_expert``: collects the rows' bytes."""

    __slots__ = ("parts", "write")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.write = self.parts.append


def _unescape(field: str) -> str | None:
    if field == _COPY_NULL:
        return None
    if "\\" not in field:
        return field
    return _COPY_ESCAPE_RE.sub(lambda m: _COPY_ESCAPES.get(m.group(1), m.group(1)), field)


def parse_copy_text(data: str) -> list[list[str | None]]:
    """Rows of ``COPY … TO STDOUT`` text format → lists of text values (None for NULL). Every
    line is a row, an empty one too (a one-column row holding the empty string)."""
    rows: list[list[str | None]] = []
    lines = data.split("\n")
    lines.pop()  # after the last row's newline
    for line in lines:
        fields: list[Any] = line.split("\t")
        if "\\" in line:
            fields = [_unescape(field) for field in fields]
        rows.append(fields)
    return rows


class _GcPause:
    """Pauses the cyclic garbage collector while any thread converts a batch. Converting creates
    hundreds of thousands of acyclic containers (rows, lists, JSON objects) that refcounting
    frees; left on, the collector re-scans them and costs two thirds of the reader's CPU. The
    collector is switched back on when the last converting thread is done, if it was on when the
    first one began (readers of a parallel snapshot overlap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._was_enabled = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._active == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0 and self._was_enabled:
                    gc.enable()


_gc_paused = _GcPause()


def _key_getter(indexes: tuple[int, ...]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``values → tuple(values[i] for i in indexes)``, without a generator per row."""
    if not indexes:
        return lambda values: ()
    if len(indexes) == 1:
        (index,) = indexes
        return lambda values: (values[index],)
    return operator.itemgetter(*indexes)


class SnapshotReader:
    """One connection inside one snapshot (see the module docstring). Close it when done; it is
    also a context manager."""

    def __init__(self, dsn: str, snapshot_name: str | None) -> None:
        self.snapshot_name = snapshot_name
        try:
            self._conn = psycopg2.connect(dsn, **connect_kwargs())
        except psycopg2.Error as exc:
            raise SnapshotError(f"snapshot reader cannot connect: {exc}".strip()) from exc
        self._plans: dict[TableName, TablePlan] = {}
        try:
            self._conn.set_session(
                isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
                readonly=True,
                autocommit=False,
            )
            with self._conn.cursor() as cur:
                if snapshot_name is not None:
                    cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
                cur.execute("SET LOCAL statement_timeout = 0")
                cur.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        except psycopg2.Error as exc:
            self._conn.close()
            raise SnapshotError(
                f"cannot import snapshot {snapshot_name!r}: {exc}".strip()
                + " (the exporting replication connection must stay open and idle until every"
                " reader has imported it)"
            ) from exc

    def close(self) -> None:
        """End the transaction (nothing was written) and close the connection."""
        if not self._conn.closed:
            self._conn.rollback()
            self._conn.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def plan(self, table: TableName) -> TablePlan:
        """Columns, key and decoder of ``table`` (catalog read inside the snapshot, cached)."""
        plan = self._plans.get(table)
        if plan is None:
            plan = self._plans[table] = self._build_plan(table)
        return plan

    def relation(self, table: TableName) -> Relation:
        """``table`` described as a pgoutput Relation message would describe it."""
        return self.plan(table).relation

    def _build_plan(self, table: TableName) -> TablePlan:
        schema, name = table
        with self._conn.cursor() as cur:
            cur.execute(_COLUMNS_SQL, (schema, name))
            rows = cur.fetchall()
            if not rows:
                raise SnapshotError(f"table {schema}.{name} does not exist in the snapshot")
            oids = sorted({row[4] for row in rows if row[4] >= FIRST_NON_BUILTIN_OID})
            types: dict[int, TypeInfo] = {}
            if oids:
                cur.execute(_TYPES_SQL, (oids,))
                types = {oid: TypeInfo(oid, namespace, typname) for oid, namespace, typname in cur}
        relid, replident = rows[0][0], rows[0][1]
        with self._conn.cursor() as cur:
            cur.execute(_KEYS_SQL, (relid,))
            indexes = cur.fetchall()
        primary = next((keys for is_pk, _, keys in indexes if is_pk), None)
        identity_index = next((keys for _, is_ident, keys in indexes if is_ident), None)
        position = {row[2]: index for index, row in enumerate(rows)}
        # order and resume by the primary key, else by the replica identity index
        order_by = primary or identity_index or []
        key_indexes = tuple(position[attnum] for attnum in order_by if attnum in position)
        # is_key as in a Relation message: the replica identity's columns
        identity = {
            "d": set(primary or ()),
            "i": set(identity_index or ()),
            "f": set(position),
        }.get(replident, set())
        columns = tuple(Column(row[3], row[4], row[5], row[2] in identity) for row in rows)
        relation = Relation(relid, schema, name, replident, columns)
        return TablePlan(
            relation=relation,
            key_columns=tuple(rows[i][3] for i in key_indexes),
            key_types=tuple(rows[i][6] for i in key_indexes),
            key_indexes=key_indexes,
            decoder=RowDecoder(relation, types),
        )

    def iter_table(
        self,
        table: TableName,
        after_pk: Sequence[str] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        condition: str | None = None,
    ) -> Iterator[Batch]:
        """Batches of ``(row, pk)`` of ``table`` in key order, after ``after_pk`` if given, of the
        rows matching ``condition`` if given."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        plan = self.plan(table)
        if after_pk is not None and len(after_pk) != len(plan.key_columns):
            raise ValueError(
                f"{table[0]}.{table[1]}: after_pk has {len(after_pk)} values but the key "
                f"{plan.key_columns or '(none: the table cannot be resumed)'}"
            )
        convert = rows_converter(plan.decoder, plan.key_indexes, parse_copy_text)
        key_of = _key_getter(plan.key_indexes)
        ordered = bool(plan.key_indexes)
        limit = batch_size if ordered else None
        # The next batch's COPY runs in a thread while this one is converted and consumed, so
        # the server and the client work at the same time.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-copy") as pool:
            after = tuple(after_pk) if after_pk is not None else None
            pending: Future[list[bytes]] | None = pool.submit(self._fetch, plan, after, limit, condition)
            while pending is not None:
                parts = pending.result()
                pending = None
                if ordered and len(parts) == batch_size:  # maybe more: ask for the next batch now
                    last = key_of(parse_copy_text(parts[-1].decode())[0])
                    pending = pool.submit(self._fetch, plan, last, limit, condition)
                with _gc_paused():
                    batch: Batch = convert(b"".join(parts).decode())
                for start in range(0, len(batch), batch_size):  # one slice unless unordered
                    yield batch[start : start + batch_size]

    def _fetch(
        self, plan: TablePlan, after: tuple[str, ...] | None, limit: int | None, condition: str | None
    ) -> list[bytes]:
        """One COPY: the rows (lines of text format) matching ``condition`` after ``after`` in
        key order, at most ``limit`` of them (None: the whole table)."""
        chunks = _Chunks()
        try:
            sql = self._batch_sql(plan, after, limit, condition)
            with self._conn.cursor() as cur:
                cur.copy_expert(sql, chunks)
        except psycopg2.Error as exc:
            table = f"{plan.relation.namespace}.{plan.relation.name}"
            raise SnapshotError(f"reading {table}: {exc}".strip()) from exc
        return chunks.parts

    def _batch_sql(
        self, plan: TablePlan, after: tuple[str, ...] | None, limit: int | None, condition: str | None
    ) -> str:
        ident = psycopg2.sql.Identifier
        relation = plan.relation
        columns = psycopg2.sql.SQL(", ").join(ident(c.name) for c in relation.columns)
        query = psycopg2.sql.SQL("SELECT {} FROM {}.{}").format(
            columns, ident(relation.namespace), ident(relation.name)
        )
        where: list[psycopg2.sql.Composable] = []
        if condition is not None:  # the profile's row filter, as the publication has it
            where.append(psycopg2.sql.SQL("({})").format(psycopg2.sql.SQL(condition)))
        keys = psycopg2.sql.SQL(", ").join(ident(name) for name in plan.key_columns)
        if plan.key_columns and after is not None:
            bounds = psycopg2.sql.SQL(", ").join(
                psycopg2.sql.SQL("{}::{}").format(
                    psycopg2.sql.Literal(value), psycopg2.sql.SQL(sql_type)
                )
                for value, sql_type in zip(after, plan.key_types)
            )
            where.append(psycopg2.sql.SQL("({}) > ({})").format(keys, bounds))
        if where:
            query += psycopg2.sql.SQL(" WHERE ") + psycopg2.sql.SQL(" AND ").join(where)
        if plan.key_columns:
            query += psycopg2.sql.SQL(" ORDER BY {}").format(keys)
        if limit is not None:
            query += psycopg2.sql.SQL(" LIMIT {}").format(psycopg2.sql.Literal(limit))
        return psycopg2.sql.SQL("COPY ({}) TO STDOUT").format(query).as_string(self._conn)

