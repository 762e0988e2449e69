"""The PostgreSQL source: an initial snapshot, then logical replication with ``pgoutput``.

``source: {type: postgres, host, port, database, user, password, slot_name, publication, ...}``
(``spec/reference.md`` 2.2–2.4, 4.1), with the ``snapshot`` and ``schema`` sections.

Delivery: the standby status feedback confirms a transaction's ``end_lsn`` only from
:meth:`PostgresSource.commit`, which the core calls once every event up to a position was
delivered or parked; psycopg2's own keepalive advance is kept from confirming more
(``savegress_gw.postgres.replication``). After a restart streaming resumes at the checkpoint's
``end_lsn`` and changes at or before its ``(lsn, sequence)`` are dropped
(``savegress_gw.postgres.changes``). Position::

    {"lsn": "0/16B3748", "sequence": 42, "end_lsn": "0/16B3700", "commit_us": ..., "schemas": {...}}

plus ``"snapshot": {"done": [...], "tables": {"public.t": [pk values], ...}}`` while the initial
snapshot is incomplete (``savegress_gw.postgres.snapshot_load``: tables done, and the last key
handed out of each table in progress; ``snapshot.parallel_workers`` tables are read at once).
Start precedence: ``start_position`` (streams from that LSN, or the slot's confirmed position if
that is later), else the checkpoint, else the slot's current position ("latest"; a slot created
now also exports the snapshot the initial load reads; if its readers cannot import it, the slot
is dropped again, so that no later start streams without the initial load).

Connection loss and server restarts reconnect with exponential backoff and jitter and resume
from what was read; configuration problems (password, ``wal_level``, REPLICATION privilege, a
slot in use past ``connection_timeout``, a missing publication or slot) stop the gateway with a
message that says how to fix them.

Schema changes (``schema.evolution``): with ``breaking_changes: block`` the source stops reading
before the change, writes ``<checkpoint.dir>/<gateway.id>.schema-blocked.json`` describing it and
logs where it is; deleting that file approves the change and streaming resumes.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Literal

import psycopg2
import psycopg2.extensions
from pydantic import Field, field_validator

from savegress_gw import Component, ComponentConfig, Context, Source, SourceBatch, hookimpl
from savegress_gw.postgres import slots
from savegress_gw.postgres.changes import ChangeReader
from savegress_gw.postgres.connection import connect_kwargs
from savegress_gw.postgres.events import HEARTBEAT_PREFIX, ChangeBuilder, SchemaChange
from savegress_gw.postgres.pgoutput import lsn_to_str, str_to_lsn
from savegress_gw.postgres.replication import ReplicationStream
from savegress_gw.postgres.slots import PostgresSourceError
from savegress_gw.envelope import now_iso
from savegress_gw.postgres.snapshot import SnapshotError, SnapshotReader
from savegress_gw.postgres.snapshot_load import Envelope, InitialSnapshot, Progress, TableReader, ThreadReader, dotted
from savegress_gw.postgres.snapshot_proc import open_process_readers
from savegress_gw.profile.settings import not_yet
from savegress_gw.units import Duration

_NAME = r"^[a-z_][a-z0-9_]{0,62}$"
_LSN = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"
_MESSAGES_PER_EVENT = 3
"""Replication messages read per wanted event (Begin/Commit/Relation come along)."""
_LAG_QUERY_S = 5.0
_BACKOFF_START_S, _BACKOFF_CAP_S = 0.5, 30.0

PoolLater = not_yet("a connection pool; the source uses one replication and one query connection")
MultiDatabaseLater = not_yet("several databases in one source")
PortalOptionsLater = not_yet("the PORTAL source.options dialect; use source.start_position")


class TlsConfig(ComponentConfig):
    enabled: bool = False
    """Off: ``sslmode=disable`` (unless ``dsn`` sets it)."""
    mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "verify-full"
    """libpq ``sslmode`` when TLS is enabled."""
    ca_file: str | None = None
    """CA certificate file (``sslrootcert``)."""
    cert_file: str | None = None
    """Client certificate file (``sslcert``)."""
    key_file: str | None = None
    """Client key file (``sslkey``)."""
    skip_verify: bool = False
    """Encrypt without checking the server certificate (``sslmode=require``). Not for production."""


class RowFilter(ComponentConfig):
    condition: str
    """SQL expression over the row (PostgreSQL 15+ publication ``WHERE``); with updates and deletes
    published it may use replica identity columns only."""


class PostgresSource(Source):
    """PostgreSQL logical replication (module docstring)."""

    name = "postgres"
    resumable = True
    replays_in_order = True  # the WAL after an LSN; not a resumed snapshot (refused with exactly_once above)
    trusted = True

    class Config(ComponentConfig):
        host: str = "localhost"
        """Database server host name or address."""
        port: int = Field(5432, ge=1, le=65535)
        """Database server port."""
        database: str = "postgres"
        """Database whose changes are captured (slots and publications belong to one database)."""
        user: str = "postgres"
        """Role to connect as: needs LOGIN and REPLICATION, and SELECT on the tables for the snapshot."""
        password: str | None = None
        """The role's password (``${DB_PASSWORD}``); none for trust or peer authentication."""
        dsn: str | None = None
        """A libpq connection string; host/port/database/user/password set explicitly override it."""
        connection_timeout: Duration = 30.0
        """How long start-up keeps retrying an unreachable server or a slot still in use."""
        tls: TlsConfig = TlsConfig()
        """TLS to the database."""
        slot_name: str = Field("savegress_slot", pattern=_NAME)
        """Logical replication slot (lower-case letters, digits, underscores)."""
        publication: str = Field("savegress_pub", pattern=_NAME)
        """Publication of the selected tables; created or aligned with the profile at start."""
        create_slot: bool = True
        """Create the slot (and export the initial snapshot) when it does not exist."""
        drop_slot_on_close: bool = False
        """Drop the slot when the source closes (its WAL is then released; the next start snapshots again)."""
        standby_message_interval: Duration = 10.0
        """Period of standby status updates (feedback) to the server."""
        wal_receiver_status_interval: Duration | None = None
        """Alias of ``standby_message_interval``."""
        start_position: str | None = Field(None, pattern=_LSN)
        """Stream from this LSN (``X/Y``) instead of the checkpoint."""
        heartbeat_enabled: bool = True
        """Emit ``pg_logical_emit_message`` heartbeats, delivered as ``HEARTBEAT`` events: they keep
        the slot and the checkpoint moving on an idle database."""
        heartbeat_interval_seconds: int = Field(10, ge=1)
        """Seconds between heartbeats."""
        preserve_transactions: bool = False
        """Emit ``BEGIN``/``COMMIT`` marker events around each transaction's changes."""
        row_filters: dict[str, RowFilter] = {}
        """Per table (``schema.table``): a row predicate pushed into the publication."""
        max_connections: PoolLater = None
        """Not implemented: the source uses one replication and one query connection."""
        idle_timeout: PoolLater = None
        """Not implemented: see ``max_connections``."""
        databases: MultiDatabaseLater = None
        """Not implemented: one source captures one database."""
        options: PortalOptionsLater = None
        """Not implemented: the PORTAL dialect; use ``start_position``."""

        @field_validator("start_position")
        @classmethod
        def _upper(cls, value: str | None) -> str | None:
            return value.upper() if value else value

    config: Config

    @classmethod
    def check_profile(cls, config: ComponentConfig, profile: Any) -> list[str]:
        problems = []
        if profile.snapshot.enabled and profile.exactly_once.enabled:
            problems.append("not implemented yet: snapshot.enabled with exactly_once.enabled: a snapshot resumed "
                            "after a crash reads the tables afresh, not the same rows again, so exactly-once could "
                            "not tell which rows Kafka already has; take the initial snapshot first "
                            "(snapshot.exit_after: true, at least once), then stream with snapshot.enabled: false")
        return problems

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._stream: ReplicationStream | None = None
        self._query: Any = None
        self._resume: dict[str, Any] | None = None
        self._started = False
        self._paused = False
        self._exhausted = False
        self._retry_at = 0.0
        self._backoff = _BACKOFF_START_S
        self._next_heartbeat = 0.0
        self._next_lag = 0.0
        self._committed_end = 0
        self._blocked: Path | None = None
        self._approved: set[str] = set()
        self._pending_block: tuple[str, str, list[dict[str, Any]]] = ("", "", [])
        self._snap: InitialSnapshot | None = None

    # ------------------------------------------------------------------ set-up

    @property
    def where(self) -> str:
        c = self.config
        return f"{c.host}:{c.port}/{c.database}"

    def _dsn(self) -> str:
        c = self.config
        explicit = c.model_fields_set
        params: dict[str, Any] = {}
        for key, field in (("host", "host"), ("port", "port"), ("dbname", "database"), ("user", "user"),
                           ("password", "password")):
            if c.dsn is None or field in explicit:
                value = getattr(c, field)
                if value is not None:
                    params[key] = value
        if c.tls.enabled:
            params["sslmode"] = "require" if c.tls.skip_verify else c.tls.mode
            for key, value in (("sslrootcert", c.tls.ca_file), ("sslcert", c.tls.cert_file),
                               ("sslkey", c.tls.key_file)):
                if value:
                    params[key] = value
        elif c.dsn is None or "sslmode" not in c.dsn:
            params["sslmode"] = "disable"
        params["application_name"] = f"savegress-gw:{c.slot_name}"
        params.update(connect_kwargs())
        return psycopg2.extensions.make_dsn(c.dsn or "", **params)

    def open(self, context: Context) -> None:
        """Check the server, align the publication and look at the slot, retrying what may pass.

        Fatal problems raise :class:`PostgresSourceError` (the gateway halts with its message).
        """
        c = self.config
        self._log = context.log.bind(source="postgres", database=c.database, slot=c.slot_name)
        self._metrics = context.metrics
        profile = context.profile
        self._snapshot_settings = profile.snapshot if profile is not None else None
        self._schema_settings = profile.schema_section if profile is not None else None
        self._tables = (list(profile.source.tables), list(profile.source.exclude_tables),
                        dict(profile.source.columns)) if profile is not None else ([], [], {})
        checkpoint_dir = Path(profile.checkpoint.directory) if profile is not None else Path(".")
        gateway_id = profile.gateway.id if profile is not None else "savegress-gw"
        self._block_file = checkpoint_dir / f"{gateway_id}.schema-blocked.json"
        self._schemas_file = checkpoint_dir / f"{gateway_id}.pg-relations.json"
        self._log.info("connecting to PostgreSQL", where=self.where)
        deadline = time.monotonic() + c.connection_timeout
        while True:
            try:
                self._prepare()
                return
            except psycopg2.Error as exc:
                fatal = self._explain(exc)
                if fatal is not None:
                    raise fatal from None
                if time.monotonic() > deadline:
                    raise PostgresSourceError(f"PostgreSQL at {self.where} is not reachable after "
                                              f"{c.connection_timeout:g}s: {str(exc).strip()}") from None
                self._log.warning("PostgreSQL not reachable yet, retrying", error=str(exc).strip())
                self._close_query()
                time.sleep(1.0)

    def _explain(self, exc: BaseException) -> PostgresSourceError | None:
        c = self.config
        return slots.explain(exc, user=c.user, where=self.where, slot=c.slot_name, publication=c.publication)

    def _query_conn(self) -> Any:
        if self._query is None or self._query.closed:
            self._query = psycopg2.connect(self._dsn(), connect_timeout=max(1, int(self.config.connection_timeout)))
            self._query.autocommit = True
        return self._query

    def _close_query(self) -> None:
        if self._query is not None:
            try:
                self._query.close()
            except psycopg2.Error:
                pass
            self._query = None

    def _prepare(self) -> None:
        c = self.config
        conn = self._query_conn()
        self._version = slots.check_server(conn, self.where)
        slots.check_replication_role(conn, c.user, self.where)
        include, exclude, columns = self._tables
        filters = {name: f.condition for name, f in c.row_filters.items()}
        everything = not include and not exclude and not columns and not filters
        tables = None if everything else slots.resolve_tables(conn, include, exclude)
        specs = None if tables is None else slots.table_specs(conn, tables, columns, filters)
        done = slots.ensure_publication(conn, c.publication, specs, self._version)
        self._primary_keys = slots.primary_keys(conn, tables)
        self._snapshot_tables = tables if tables is not None else slots.resolve_tables(conn, [], [])
        self._log.info("publication ready", publication=c.publication, action=done,
                       tables="all" if tables is None else [f"{s}.{t}" for s, t in tables])
        self._slot = self._wait_for_slot(conn)

    def _wait_for_slot(self, conn: Any) -> slots.SlotState | None:
        """The slot's state once no other process streams from it (None: it does not exist)."""
        c = self.config
        deadline = time.monotonic() + c.connection_timeout
        while True:
            state = slots.slot_state(conn, c.slot_name)
            if state is None:
                if not c.create_slot:
                    raise PostgresSourceError(
                        f"replication slot {c.slot_name!r} does not exist at {self.where}: set source.create_slot: "
                        f"true or create it with SELECT pg_create_logical_replication_slot('{c.slot_name}', 'pgoutput')")
                return None
            slots.check_slot(state, c.slot_name, c.database, self.where)
            if state.active_pid is None:
                return state
            if time.monotonic() > deadline:
                raise PostgresSourceError(
                    f"replication slot {c.slot_name!r} at {self.where} is in use by PostgreSQL process "
                    f"{state.active_pid} (another consumer?): stop that consumer, or give this gateway its own "
                    f"source.slot_name; SELECT pg_terminate_backend({state.active_pid}) ends it")
            time.sleep(0.5)

    def seek(self, position: Any) -> None:
        """Resume after ``position`` (a position ``read`` returned; module docstring)."""
        try:
            str_to_lsn(position["lsn"]), int(position["sequence"]), str_to_lsn(position["end_lsn"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"checkpoint position {position!r} is not a PostgreSQL position "
                             f"(lsn, sequence, end_lsn): {exc}") from None
        self._resume = position

    # ------------------------------------------------------------------ starting

    def _start(self) -> None:
        """Decide where to start (module docstring), create the slot if needed, maybe snapshot."""
        c = self.config
        schemas = (self._resume or {}).get("schemas")
        if schemas is None and self._schemas_file.exists():
            schemas = json.loads(self._schemas_file.read_text())
        builder = ChangeBuilder(c.database, c.slot_name, schemas, self._primary_keys, self._save_schemas)
        detect = self._schema_settings is None or self._schema_settings.detection != "none"
        self._reader = ChangeReader(builder, c.preserve_transactions, self._schema_policy, detect)
        self._stream = ReplicationStream(self._dsn(), c.slot_name, c.publication, self._status_interval)
        snapshot_wanted = bool(self._snapshot_settings and self._snapshot_settings.enabled)
        created: int | None = None
        if self._slot is None:
            fresh = self._resume is None and not c.start_position
            if not fresh:
                self._log.error("the replication slot is gone: creating it again; changes made since the "
                                "checkpoint while it was missing are not captured", slot=c.slot_name)
            self._stream.connect(c.connection_timeout)
            created, name = self._stream.create_slot(export=snapshot_wanted)
            self._log.info("created replication slot", slot=c.slot_name, consistent_point=lsn_to_str(created))
            if snapshot_wanted:
                self._reader.start_at(created)
                try:
                    self._begin_snapshot(name, {"done": []})  # imported before this connection's next command
                except SnapshotError as exc:
                    self._forget_slot()
                    raise PostgresSourceError(
                        f"initial snapshot: {exc}; snapshot.parallel_workers readers need as many free connections "
                        f"(max_connections); the new slot was dropped, so the next start exports a snapshot again"
                    ) from None
                self._started = True
                return
        if c.start_position:
            self._reader.start_at(str_to_lsn(c.start_position))
            self._log.info("starting at source.start_position (it overrides the checkpoint)", lsn=c.start_position)
        elif created is not None:
            self._reader.start_at(created)
        elif self._resume is not None:
            self._reader.restore(self._resume)
            if "snapshot" in self._resume:
                self._begin_snapshot(None, self._resume["snapshot"])
        else:
            assert self._slot is not None
            self._reader.start_at(self._slot.confirmed_flush)
            self._log.info("no checkpoint: starting at the slot's confirmed position",
                           lsn=lsn_to_str(self._slot.confirmed_flush))
        self._started = True

    def _forget_slot(self) -> None:
        """Drop the slot just created: its exported snapshot could not be imported, and a start
        that found it would stream without the initial load."""
        if self._stream is not None:
            self._stream.close()
        conn, deadline = self._query_conn(), time.monotonic() + self.config.connection_timeout
        while (state := slots.slot_state(conn, self.config.slot_name)) is not None and state.active_pid is not None \
                and time.monotonic() < deadline:
            time.sleep(0.05)  # the walsender releases the slot when it has seen the connection go
        slots.drop_slot(conn, self.config.slot_name)

    def _save_schemas(self, schemas: dict[str, Any]) -> None:
        """Keep the relation cache beside the checkpoint too, for a start without a checkpoint
        position (a crash before the first checkpoint): schema changes are then still detected."""
        self._schemas_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._schemas_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(schemas))
        temporary.replace(self._schemas_file)

    @property
    def _status_interval(self) -> float:
        c = self.config
        return min(c.standby_message_interval, c.wal_receiver_status_interval or c.standby_message_interval)

    def _begin_snapshot(self, snapshot_name: str | None, position: dict[str, Any]) -> None:
        """Start the initial load of the tables, or resume it from a position's ``snapshot``
        entry (without an exported snapshot). Every reader has imported ``snapshot_name`` when
        this returns, so the replication connection may run its next command."""
        progress = Progress.from_position(position)
        tables = [t for t in self._snapshot_tables if dotted(t) not in progress.done]
        filters = {name: f.condition for name, f in self.config.row_filters.items()}
        conditions = {t: c for t in tables if (c := slots.row_filter(filters, *t)) is not None}
        settings = self._snapshot_settings
        workers = min(settings.parallel_workers if settings else 1, len(tables))
        envelope = Envelope(self.config.database, lsn_to_str(self._reader.end), now_iso())
        readers: list[TableReader]
        if workers > 1:  # tables converted at once, in reader processes beside this one (docs/postgres.md)
            readers = list(open_process_readers(self._dsn(), snapshot_name, workers, envelope, self._batch_size))
        else:
            readers = [ThreadReader(SnapshotReader(self._dsn(), snapshot_name), envelope, self._batch_size)
                       for _ in range(workers)]  # one, or none without tables
        self._snap = InitialSnapshot(readers, tables, progress, conditions)
        self._log.info("initial snapshot", tables=[dotted(t) for t in tables], readers=workers,
                       reader_processes=workers > 1, resumed=bool(progress.done or progress.tables),
                       in_progress=progress.tables, exported_snapshot=snapshot_name)

    @property
    def _batch_size(self) -> int:
        return self._snapshot_settings.batch_size if self._snapshot_settings else 10_000

    def _read_snapshot(self, max_events: int, timeout_s: float) -> SourceBatch | None:
        """The next SNAPSHOT events with the position that claims them (None: none ready yet)."""
        snap = self._snap
        assert snap is not None
        events = snap.read(min(max_events, self._batch_size), timeout_s)
        if not len(events) and not snap.finished:
            return None
        position = self._reader.position()
        if snap.finished:
            snap.close()
            self._snap = None
            self._log.info("initial snapshot delivered to the pipeline", rows=snap.rows)
            if self._snapshot_settings is not None and self._snapshot_settings.exit_after:
                self._exhausted = True  # migration mode: the core drains, checkpoints and stops
        else:
            position["snapshot"] = snap.progress()
        return SourceBatch([], position, encoded=events)

    # ------------------------------------------------------------------ reading

    def read(self, max_events: int, timeout_s: float) -> SourceBatch | None:
        if self._paused or self._exhausted:
            return None
        if not self._started:
            try:
                self._start()
            except psycopg2.Error as exc:
                self._fail(exc)
                return None
        if self._snap is not None:
            try:
                return self._read_snapshot(max_events, timeout_s)
            except SnapshotError as exc:
                raise PostgresSourceError(f"initial snapshot failed: {exc}; the gateway restarts it from the "
                                          f"checkpoint (tables already read are not read again)") from None
        if self._blocked is not None and not self._unblocked(timeout_s):
            return None
        now = time.monotonic()
        stream = self._stream
        if stream is None or not stream.started:
            if now < self._retry_at or not self._connect():
                time.sleep(min(timeout_s, max(0.0, self._retry_at - now)))
                return None
            stream = self._stream
        try:
            if now >= self._next_heartbeat or now >= self._next_lag:
                self._housekeeping(now)
            messages = stream.read(max_events * _MESSAGES_PER_EVENT, timeout_s)
        except psycopg2.Error as exc:
            self._fail(exc)
            return None
        reader = self._reader
        before = (reader.lsn, reader.seq, reader.end)
        events: list[dict[str, Any]] = []
        if not reader.process(messages, events):
            self._block()
        if not events and (reader.lsn, reader.seq, reader.end) == before:
            if self._metrics is not None and stream.received_end <= self._committed_end and reader.caught_up:
                self._metrics.set("replication_lag_seconds", 0.0)
            return None
        return SourceBatch(events, reader.position())

    def _connect(self) -> bool:
        """(Re)connect and START_REPLICATION from what was read; False (retry later) if it failed."""
        c = self.config
        stream = self._stream or ReplicationStream(self._dsn(), c.slot_name, c.publication, self._status_interval)
        self._stream = stream
        try:
            if stream.conn is None or stream.conn.closed:
                stream.connect(c.connection_timeout)
            self._reader.rewind()
            stream.start(self._reader.end)
        except psycopg2.Error as exc:
            self._fail(exc)
            return False
        self._log.info("streaming changes", slot=c.slot_name, publication=c.publication,
                       start_lsn=lsn_to_str(self._reader.end))
        self._backoff = _BACKOFF_START_S
        return True

    def _fail(self, exc: psycopg2.Error) -> None:
        """A fatal error raises; anything else drops the connection and schedules a reconnect."""
        fatal = self._explain(exc)
        if fatal is not None:
            raise fatal from None
        delay = self._backoff * random.uniform(0.5, 1.0)
        self._backoff = min(self._backoff * 2, _BACKOFF_CAP_S)
        self._retry_at = time.monotonic() + delay
        self._log.warning("PostgreSQL connection lost, reconnecting", error=str(exc).strip().splitlines()[0]
                          if str(exc).strip() else type(exc).__name__, retry_in_s=round(delay, 2))
        if self._stream is not None:
            self._stream.close()
        self._close_query()

    def _housekeeping(self, now: float) -> None:
        """Heartbeat message and slot lag, on the query connection (its failures are not fatal)."""
        c = self.config
        try:
            conn = self._query_conn()
            if c.heartbeat_enabled and now >= self._next_heartbeat:
                self._next_heartbeat = now + c.heartbeat_interval_seconds
                content = json.dumps({"slot": c.slot_name, "emitted_at_ns": time.time_ns()})
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_logical_emit_message(true, %s, %s)", (HEARTBEAT_PREFIX, content))
            if now >= self._next_lag:
                self._next_lag = now + _LAG_QUERY_S
                lag = slots.slot_lag_bytes(conn, c.slot_name)
                if lag is not None and self._metrics is not None:
                    self._metrics.set("replication_slot_lag_bytes", lag)
        except psycopg2.Error as exc:
            self._next_heartbeat = max(self._next_heartbeat, now + 1.0)
            self._next_lag = max(self._next_lag, now + 1.0)
            self._log.warning("heartbeat/lag query failed", error=str(exc).strip())
            self._close_query()

    # ------------------------------------------------------------------ schema policies

    def _schema_policy(self, table: str, changes: list[SchemaChange]) -> bool:
        """Apply ``schema.evolution`` to ``changes`` of ``table``: True to emit the DDL event."""
        settings = self._schema_settings
        breaking = any(change.breaking for change in changes)
        described = [{"change": change.kind, **change.detail} for change in changes]
        if settings is None or not settings.evolution.enabled:
            return True
        policy = settings.evolution.breaking_changes if breaking else settings.evolution.compatible_changes
        if policy == "auto":
            self._log.info("schema change", table=table, changes=described)
            return True
        if policy == "warn":
            self._log.warning("schema change", table=table, changes=described, breaking=breaking)
            return True
        if policy == "error":
            kind = "breaking" if breaking else "compatible"
            raise PostgresSourceError(
                f"{kind} schema change of {table} ({described}) with schema.evolution."
                f"{'breaking' if breaking else 'compatible'}_changes: error; change the policy to go on "
                f"(the change is read again from the checkpoint)")
        signature = json.dumps([table, described], sort_keys=True)
        if signature in self._approved:
            self._log.warning("approved schema change", table=table, changes=described)
            return True
        self._pending_block = (signature, table, described)
        return False

    def _block(self) -> None:
        """Stop before a blocked schema change: disconnect and wait for its marker file to go."""
        signature, table, described = self._pending_block
        self._block_file.parent.mkdir(parents=True, exist_ok=True)
        self._block_file.write_text(json.dumps({"table": table, "changes": described,
                                                "lsn": lsn_to_str(self._reader.lsn)}, indent=2) + "\n")
        self._blocked = self._block_file
        if self._stream is not None:
            self._stream.close()
        self._log.error("pipeline blocked by a breaking schema change (schema.evolution.breaking_changes: block); "
                        f"review it, then delete {self._block_file} to apply it and resume",
                        table=table, changes=described)

    def _unblocked(self, timeout_s: float) -> bool:
        """False while the block marker exists; once it is deleted the change is approved."""
        if self._blocked is not None and self._blocked.exists():
            time.sleep(min(timeout_s, 0.05))
            return False
        self._approved.add(self._pending_block[0])
        self._log.warning("schema change approved, resuming", table=self._pending_block[1])
        self._blocked = None
        return True

    # ------------------------------------------------------------------ confirming

    def commit(self, position: Any, dropped: int = 0) -> None:
        """Everything up to ``position`` is delivered: confirm its last complete transaction."""
        end = str_to_lsn(position["end_lsn"])
        if end > self._committed_end:
            self._committed_end = end
            if self._stream is not None and self._stream.started:
                try:
                    self._stream.confirm(end)
                except psycopg2.Error as exc:
                    self._fail(exc)
        if self._metrics is not None and position.get("commit_us"):
            self._metrics.set("replication_lag_seconds", max(0.0, time.time() - position["commit_us"] / 1e6))

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def close(self) -> None:
        if self._snap is not None:
            self._snap.close()
            self._snap = None
        if self._stream is not None:
            if self._stream.started and self._committed_end:
                try:
                    self._stream.confirm(self._committed_end, force=True)
                except psycopg2.Error:
                    pass
            self._stream.close()
            self._stream = None
        if self.config.drop_slot_on_close:
            try:
                slots.drop_slot(self._query_conn(), self.config.slot_name)
                self._log.info("dropped replication slot", slot=self.config.slot_name)
            except psycopg2.Error as exc:
                self._log.warning("could not drop the replication slot", error=str(exc).strip())
        self._close_query()


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(PostgresSource)
