"""Server checks, publication and slot management, and what PostgreSQL errors mean.

Everything here runs on an ordinary (non-replication) connection except slot creation, which
needs the replication connection (see ``replication.ReplicationStream.create_slot``).

Contracts:

* :func:`explain` turns a psycopg2 error into a :class:`PostgresSourceError` (fatal: a
  configuration problem, the message says how to fix it) or returns None (transient: reconnect
  with backoff). Connect-time errors carry no SQLSTATE, so they are matched on their text.
* :func:`ensure_publication` makes the publication publish exactly the selected tables: created
  when missing, its table list (with column lists and row filters, PostgreSQL 15+) replaced with
  ``ALTER PUBLICATION ... SET TABLE`` when it differs. With no include/exclude patterns, no column
  lists and no row filters it is ``FOR ALL TABLES`` (superuser only), which also captures tables
  created later; otherwise the patterns are resolved against the catalog at start, and tables
  created later are captured from the next start on.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from savegress_gw.errors import GatewayError
from savegress_gw.filters import keep_column

_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


class PostgresSourceError(GatewayError):
    """A problem the PostgreSQL source cannot get past by retrying; the message says how to fix it."""


# ------------------------------------------------------------------------------- errors


def explain(exc: BaseException, *, user: str, where: str, slot: str, publication: str) -> PostgresSourceError | None:
    """The fatal meaning of ``exc`` (with a fix), or None when reconnecting may help."""
    text = str(exc).strip()
    lower = text.lower()
    code = getattr(exc, "pgcode", None)
    first = text.splitlines()[0] if text else type(exc).__name__
    if "password authentication failed" in lower or code == "28P01":
        return PostgresSourceError(f"PostgreSQL at {where} rejected the password of user {user!r}: set "
                                   f"source.password (or the password in source.dsn) to the role's password")
    if "no pg_hba.conf entry" in lower or code == "28000":
        return PostgresSourceError(f"PostgreSQL at {where} refuses user {user!r} ({first}): add a pg_hba.conf line "
                                   f"for this database, user and address (logical replication uses the ordinary "
                                   f"database lines, not 'replication'), then reload PostgreSQL")
    if "superuser or replication role" in lower or "permission denied to start wal sender" in lower:
        return PostgresSourceError(f"user {user!r} may not stream changes at {where}: run "
                                   f"ALTER ROLE {user} WITH REPLICATION (as a superuser), or use a role that has it")
    if "wal_level" in lower and "logical" in lower:
        return PostgresSourceError(f"PostgreSQL at {where} does not have wal_level=logical: set wal_level = logical "
                                   f"in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server")
    if "does not exist" in lower and "publication" in lower:
        return PostgresSourceError(f"publication {publication!r} does not exist at {where} (or was created after the "
                                   f"slot {slot!r}): create it before the slot, or drop the slot and let the gateway "
                                   f"recreate both ({first})")
    if "does not exist" in lower and "replication slot" in lower:
        return PostgresSourceError(f"replication slot {slot!r} does not exist at {where}: set source.create_slot: true "
                                   f"or create it with SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    if "database" in lower and "does not exist" in lower:
        return PostgresSourceError(f"{first} at {where}: check source.database")
    if "can no longer get changes" in lower or "can no longer access replication slot" in lower \
            or "has been invalidated" in lower or code == "58P01":
        return PostgresSourceError(f"replication slot {slot!r} at {where} was invalidated ({first}): the WAL it needed "
                                   f"is gone; drop the slot (SELECT pg_drop_replication_slot('{slot}')), move the "
                                   f"checkpoint away and start again with a snapshot")
    if code is not None and code[:2] in ("42", "0A", "22") and code != "42P01":
        return PostgresSourceError(f"PostgreSQL at {where} refused the source's request: {first} (SQLSTATE {code})")
    return None


# ------------------------------------------------------------------------------- server


def check_server(conn: Any, where: str) -> int:
    """Refuse a server without ``wal_level=logical``; return ``server_version_num``."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('wal_level'), current_setting('server_version_num')::int")
        wal_level, version = cur.fetchone()
    if wal_level != "logical":
        raise PostgresSourceError(f"PostgreSQL at {where} has wal_level={wal_level}, logical replication needs "
                                  f"wal_level=logical: ALTER SYSTEM SET wal_level = logical, then restart the server")
    if version < 100000:
        raise PostgresSourceError(f"PostgreSQL at {where} is version {version}; pgoutput needs 10 or newer")
    return int(version)


def check_replication_role(conn: Any, user: str, where: str) -> None:
    """Refuse a role without REPLICATION (or superuser) before any slot is touched."""
    with conn.cursor() as cur:
        cur.execute("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
        row = cur.fetchone()
    if not row or not row[0]:
        raise PostgresSourceError(f"user {user!r} may not stream changes at {where}: run "
                                  f"ALTER ROLE {user} WITH REPLICATION (as a superuser), or use a role that has it")


# ------------------------------------------------------------------------------- tables


def _matches(pattern: str, schema: str, table: str) -> bool:
    if "." in pattern:
        return fnmatch.fnmatchcase(f"{schema}.{table}", pattern)
    return fnmatch.fnmatchcase(table, pattern)


def resolve_tables(conn: Any, include: list[str], exclude: list[str]) -> list[tuple[str, str]]:
    """Ordinary and partitioned tables of the database matching ``include`` (all when empty) and
    no ``exclude`` pattern, sorted. Partitions are left to their root."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'"
            " AND n.nspname NOT IN %s AND n.nspname NOT LIKE 'pg_temp%%' ORDER BY 1, 2",
            (_SYSTEM_SCHEMAS,),
        )
        rows = cur.fetchall()
    return [(schema, table) for schema, table in rows
            if (not include or any(_matches(p, schema, table) for p in include))
            and not any(_matches(p, schema, table) for p in exclude)]


@dataclass(frozen=True)
class TableSpec:
    """One published table: its columns (None = all) and row filter (None = every row)."""

    schema: str
    table: str
    columns: tuple[str, ...] | None = None
    condition: str | None = None

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


def table_specs(conn: Any, tables: list[tuple[str, str]], columns: dict[str, list[str]],
                row_filters: dict[str, str]) -> list[TableSpec]:
    """Column lists (from ``source.columns`` patterns) and row filters per table.

    A column list must keep the replica identity columns (PostgreSQL refuses UPDATE/DELETE
    otherwise); a list that drops one is an error naming it.
    """
    specs = []
    for schema, table in tables:
        patterns = columns.get(f"{schema}.{table}") or columns.get(table)
        kept: tuple[str, ...] | None = None
        if patterns:
            names, identity = _columns(conn, schema, table)
            kept = tuple(n for n in names if keep_column(n, tuple(patterns)))
            dropped_keys = [n for n in identity if n not in kept]
            if dropped_keys:
                raise PostgresSourceError(
                    f"source.columns.{schema}.{table} drops replica identity column(s) {', '.join(dropped_keys)}; "
                    f"PostgreSQL needs them to publish updates and deletes: keep them in the list")
            if len(kept) == len(names):
                kept = None
        condition = row_filter(row_filters, schema, table)
        specs.append(TableSpec(schema, table, kept, condition))
    return specs


def row_filter(row_filters: dict[str, str], schema: str, table: str) -> str | None:
    """The condition ``source.row_filters`` sets for a table (keyed ``schema.table`` or ``table``)."""
    return row_filters.get(f"{schema}.{table}") or row_filters.get(table)


def _columns(conn: Any, schema: str, table: str) -> tuple[list[str], list[str]]:
    """Column names in order, and the replica identity columns."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT a.attname, COALESCE(a.attnum = ANY(i.indkey), false)"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_index i ON i.indrelid = c.oid AND (CASE c.relreplident WHEN 'i' THEN i.indisreplident"
            " WHEN 'd' THEN i.indisprimary ELSE false END)"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
            " AND a.attgenerated = '' ORDER BY a.attnum",
            (schema, table),
        )
        rows = cur.fetchall()
    return [r[0] for r in rows], [r[0] for r in rows if r[1]]


def ensure_publication(conn: Any, publication: str, specs: list[TableSpec] | None, version: int) -> str:
    """Create or align ``publication`` (module docstring); ``specs`` None = FOR ALL TABLES.

    Returns what was done (``created``, ``altered``, ``unchanged``) for the startup log.
    """
    if version < 150000 and specs and any(s.columns or s.condition for s in specs):
        raise PostgresSourceError("column lists and row filters need PostgreSQL 15 or newer in the publication; "
                                  "remove source.row_filters (source.columns still filter inside the gateway)")
    name = sql.Identifier(publication)
    if specs is None:
        target = sql.SQL("FOR ALL TABLES")
    elif not specs:
        raise PostgresSourceError("no table matches source.tables / source.exclude_tables in this database: "
                                  "check the patterns (schema.table, * wildcards)")
    else:
        target = sql.SQL("FOR TABLE ") + sql.SQL(", ").join(_table_clause(s) for s in specs)
    with conn.cursor() as cur:
        cur.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,))
        row = cur.fetchone()
        if row is None:
            cur.execute(sql.SQL("CREATE PUBLICATION {} ").format(name) + target)
            return "created"
        if specs is None:
            if row[0]:
                return "unchanged"
            raise PostgresSourceError(f"publication {publication!r} exists for a list of tables but the profile selects "
                                      f"every table: drop the publication (DROP PUBLICATION {publication}) or set "
                                      f"source.tables")
        if row[0]:
            raise PostgresSourceError(f"publication {publication!r} is FOR ALL TABLES but the profile selects tables: "
                                      f"drop it (DROP PUBLICATION {publication}) so the gateway creates its own, "
                                      f"or remove source.tables/exclude_tables/row_filters")
        if _published(cur, publication, version) == {(s.schema, s.table, s.columns, s.condition) for s in specs}:
            return "unchanged"
        cur.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE ").format(name)
                    + sql.SQL(", ").join(_table_clause(s) for s in specs))
        return "altered"


def _table_clause(spec: TableSpec) -> sql.Composable:
    clause: sql.Composable = sql.Identifier(spec.schema, spec.table)
    if spec.columns:
        clause = clause + sql.SQL(" (") + sql.SQL(", ").join(map(sql.Identifier, spec.columns)) + sql.SQL(")")
    if spec.condition:
        clause = clause + sql.SQL(" WHERE (") + sql.SQL(spec.condition) + sql.SQL(")")  # type: ignore[operator]
    return clause


def _published(cur: Any, publication: str, version: int) -> set[tuple[Any, ...]]:
    if version < 150000:
        cur.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))
        return {(s, t, None, None) for s, t in cur.fetchall()}
    cur.execute(
        "SELECT n.nspname, c.relname, pr.prattrs::int2[], pg_get_expr(pr.prqual, pr.prrelid)"
        " FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid"
        " JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE p.pubname = %s", (publication,))
    rows = cur.fetchall()
    out = set()
    for schema, table, attrs, qual in rows:
        columns = None
        if attrs:
            cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum = ANY(%s)"
                        " ORDER BY attnum", (f'"{schema}"."{table}"', list(attrs)))
            columns = tuple(r[0] for r in cur.fetchall())
        condition = qual[1:-1] if qual and qual.startswith("(") and qual.endswith(")") else qual
        out.add((schema, table, columns, condition))
    return out


# ------------------------------------------------------------------------------- slots


@dataclass(frozen=True)
class SlotState:
    active_pid: int | None
    plugin: str
    database: str
    confirmed_flush: int
    wal_status: str | None


def slot_state(conn: Any, slot: str) -> SlotState | None:
    """The slot as ``pg_replication_slots`` shows it, or None when it does not exist."""
    with conn.cursor() as cur:
        cur.execute("SELECT active_pid, plugin, database, COALESCE(confirmed_flush_lsn, '0/0') - '0/0'::pg_lsn,"
                    " wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
    if row is None:
        return None
    return SlotState(row[0], row[1] or "", row[2] or "", int(row[3]), row[4])


def check_slot(state: SlotState, slot: str, database: str, where: str) -> None:
    """Refuse a slot that belongs to another plugin or database, or has lost its WAL."""
    if state.plugin != "pgoutput" or state.database != database:
        raise PostgresSourceError(f"replication slot {slot!r} at {where} uses plugin {state.plugin!r} in database "
                                  f"{state.database!r}; the source needs a pgoutput slot in {database!r}: pick "
                                  f"another source.slot_name or drop that slot")
    if state.wal_status == "lost":
        raise PostgresSourceError(f"replication slot {slot!r} at {where} was invalidated (wal_status lost): drop it "
                                  f"(SELECT pg_drop_replication_slot('{slot}')), move the checkpoint away and start "
                                  f"again with a snapshot")


def drop_slot(conn: Any, slot: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = %s AND NOT active", (slot,))


def slot_lag_bytes(conn: Any, slot: str) -> float | None:
    """WAL bytes between the server's current position and the slot's confirmed flush position."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots"
                    " WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
    return float(row[0]) if row and row[0] is not None else None


def primary_keys(conn: Any, tables: list[tuple[str, str]] | None) -> dict[str, list[str]]:
    """``schema.table`` → primary key columns (in key order) of ``tables`` (None: every table)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname, c.relname, array_agg(a.attname ORDER BY k.ord)"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
            " WHERE i.indisprimary AND n.nspname NOT IN %s GROUP BY 1, 2", (_SYSTEM_SCHEMAS,))
        rows = cur.fetchall()
    wanted = None if tables is None else set(tables)
    return {f"{s}.{t}": list(cols) for s, t, cols in rows if wanted is None or (s, t) in wanted}
