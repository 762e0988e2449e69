"""The local PostgreSQL launcher (scripts/pg_local.py) for tests, and capture of real pgoutput
messages through a temporary replication slot."""

from __future__ import annotations

import importlib.util
import select
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    if "pg_local" in sys.modules:
        return sys.modules["pg_local"]
    spec = importlib.util.spec_from_file_location("pg_local", REPO / "scripts" / "pg_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pg_local"] = module
    spec.loader.exec_module(module)
    return module


pg_local = _load()


def capture(
    postgres: Any,
    dbname: str,
    statements: Sequence[str],
    *,
    commits: int | None = None,
    setup: Sequence[str] = (),
    publication_tables: str = "ALL TABLES",
    timeout: float = 60.0,
) -> list[Any]:
    """Run ``setup``, create a publication and a TEMPORARY pgoutput slot, run each of
    ``statements`` in its own transaction, and return the decoded messages (through
    ``savegress_gw.postgres.pgoutput.decode``) of the first ``commits`` transactions (default:
    one per statement). Logical messages are requested (``messages 'true'``)."""
    import psycopg2
    import psycopg2.extras

    from savegress_gw.postgres.connection import connect_kwargs
    from savegress_gw.postgres.pgoutput import Commit, decode

    dsn = postgres.dsn(dbname=dbname)
    sql = psycopg2.connect(dsn, **connect_kwargs())
    sql.autocommit = True
    repl = psycopg2.connect(
        dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection, **connect_kwargs()
    )
    try:
        with sql.cursor() as cur:
            for statement in setup:
                cur.execute(statement)
            cur.execute(f"CREATE PUBLICATION capture_pub FOR {publication_tables}")
        rcur = repl.cursor()
        rcur.execute(
            "CREATE_REPLICATION_SLOT capture_slot TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')"
        )
        rcur.fetchone()
        with sql.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        rcur.start_replication(
            "capture_slot",
            options={"proto_version": "1", "publication_names": "capture_pub", "messages": "true"},
        )
        wanted = len(statements) if commits is None else commits
        messages: list[Any] = []
        seen = 0
        deadline = time.monotonic() + timeout
        while seen < wanted:
            raw = rcur.read_message()
            if raw is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{seen}/{wanted} commits after {timeout}s: {messages}")
                select.select([rcur], [], [], 0.5)
                continue
            message = decode(raw.payload)
            messages.append(message)
            seen += isinstance(message, Commit)
        return messages
    finally:
        repl.close()
        sql.close()
