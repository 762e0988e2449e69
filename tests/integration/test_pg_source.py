"""The PostgreSQL source end to end: a real PostgreSQL, a real gateway process, the file sink."""

from __future__ import annotations

import base64
import re
import signal
from pathlib import Path

import pytest

from savegress_gw.postgres.pgoutput import str_to_lsn
from tests.harness.pg_source import events, pg_profile, release, slot_row, start_streaming, wait_events

BIG = "toast-" + "x" * 6000


@pytest.fixture()
def db(postgres, pg_database: str):
    """A fresh database whose gateways are gone before it is dropped."""
    yield pg_database
    release(postgres, pg_database)


def _sql(postgres, db):
    return lambda statement, params=None: postgres.execute(statement, params, dbname=db)


def test_changes_carry_rows_per_replica_identity_toast_markers_and_resume_after_a_clean_stop(
        postgres, db: str, tmp_path: Path) -> None:
    sql = _sql(postgres, db)
    sql("CREATE TABLE d (id int PRIMARY KEY, name text, doc text, amount numeric(10,2), data jsonb, raw bytea,"
        " tags text[], at timestamptz)")
    sql("ALTER TABLE d ALTER COLUMN doc SET STORAGE EXTERNAL")
    sql("CREATE TABLE f (id int PRIMARY KEY, name text, doc text)")
    sql("ALTER TABLE f REPLICA IDENTITY FULL")
    sql("ALTER TABLE f ALTER COLUMN doc SET STORAGE EXTERNAL")
    profile = pg_profile(postgres, db, tmp_path, source={"preserve_transactions": True})
    gateway = start_streaming(postgres, db, tmp_path, profile)

    sql("INSERT INTO d VALUES (1, 'a', %s, 12.30, '{\"k\": [1, 2]}', '\\xdeadbeef', ARRAY['p', 'q r'],"
        " '2025-01-15 10:30:00+00')", (BIG,))
    sql("INSERT INTO f VALUES (1, 'a', %s)", (BIG,))
    sql("UPDATE d SET name = 'b' WHERE id = 1")  # doc is an unchanged out-of-line value
    sql("UPDATE f SET name = 'b' WHERE id = 1")
    sql("UPDATE d SET id = 2 WHERE id = 1")  # a key change: before carries the old key
    sql("DELETE FROM d WHERE id = 2")
    sql("DELETE FROM f WHERE id = 1")
    sql("INSERT INTO d (id, name) VALUES (10, 'tx1'); INSERT INTO d (id, name) VALUES (11, 'tx2')")
    sql("TRUNCATE d")
    found = wait_events(tmp_path, lambda e: any(x["operation"] == "TRUNCATE" for x in e),
                        operations=("INSERT", "UPDATE", "DELETE", "TRUNCATE", "BEGIN", "COMMIT"))
    rows = [e for e in found if e["operation"] not in ("BEGIN", "COMMIT")]
    assert [(e["table"], e["operation"]) for e in rows] == [
        ("d", "INSERT"), ("f", "INSERT"), ("d", "UPDATE"), ("f", "UPDATE"), ("d", "UPDATE"), ("d", "DELETE"),
        ("f", "DELETE"), ("d", "INSERT"), ("d", "INSERT"), ("d", "TRUNCATE")]
    insert_d, insert_f, toast_d, toast_f, rekey, delete_d, delete_f, tx1, tx2, truncate = rows

    assert insert_d["before"] is None
    assert insert_d["after"] == {"id": 1, "name": "a", "doc": BIG, "amount": "12.30", "data": {"k": [1, 2]},
                                 "raw": base64.b64encode(bytes.fromhex("deadbeef")).decode(), "tags": ["p", "q r"],
                                 "at": "2025-01-15T10:30:00+00:00"}
    assert insert_d["schema"] == "public" and insert_d["source"] == "postgres"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", insert_d["timestamp"])
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", insert_d["position"]["lsn"]) and insert_d["position"]["sequence"] == 1
    assert insert_d["transaction_id"].isdigit()
    assert insert_d["metadata"]["primary_key"] == ["id"]

    # DEFAULT identity: no old row, and the unchanged TOAST value is left out and listed, never null.
    assert toast_d["before"] is None
    assert "doc" not in toast_d["after"] and toast_d["after"]["name"] == "b"
    assert toast_d["metadata"]["unchanged_toast"] == ["doc"]
    # FULL identity: the whole old row, and the unchanged value copied from it.
    assert toast_f["before"] == {"id": 1, "name": "a", "doc": BIG}
    assert toast_f["after"] == {"id": 1, "name": "b", "doc": BIG}
    assert "unchanged_toast" not in toast_f["metadata"]
    assert rekey["before"] == {"id": 1} and rekey["after"]["id"] == 2
    assert delete_d["before"] == {"id": 2} and delete_d["after"] is None
    assert delete_f["before"] == {"id": 1, "name": "b", "doc": BIG} and delete_f["after"] is None
    assert truncate["before"] is None and truncate["after"] is None

    # preserve_transactions: the two-statement transaction is wrapped in markers with its id.
    tx_events = [e for e in found if e["transaction_id"] == tx1["transaction_id"]]
    assert [e["operation"] for e in tx_events] == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
    assert tx2["transaction_id"] == tx1["transaction_id"]
    assert tx1["position"]["lsn"] == tx2["position"]["lsn"] and tx2["position"]["sequence"] == 2
    assert len({e["id"] for e in found}) == len(found)

    # A clean stop confirms everything: the next start re-sends nothing and carries on.
    assert gateway.stop() == 0
    assert slot_row(postgres, db, "gw_slot")[0] is False
    sql("INSERT INTO f VALUES (2, 'after restart', 'x')")
    start_streaming(postgres, db, tmp_path, profile)
    again = wait_events(tmp_path, lambda e: any(x["after"] and x["after"].get("name") == "after restart" for x in e))
    ids = [e["id"] for e in again]
    assert len(ids) == len(set(ids)), "events were delivered twice across a clean restart"


def test_postgres_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    import psycopg2

    from tests.harness.postgres import pg_local

    server = pg_local.LocalPostgres(tmp_path / "pg")
    server.start()
    try:
        server.create_database("app")
        server.execute("CREATE TABLE seqs (n int PRIMARY KEY)", dbname="app")
        profile = pg_profile(server, "app", tmp_path / "gw")
        (tmp_path / "gw").mkdir()
        start_streaming(server, "app", tmp_path / "gw", profile)
        committed: list[int] = []

        def write(first: int, count: int) -> None:
            conn = psycopg2.connect(server.dsn(dbname="app"))
            conn.autocommit = True
            with conn.cursor() as cur:
                for n in range(first, first + count, 10):
                    cur.execute("INSERT INTO seqs SELECT generate_series(%s, %s)", (n, n + 9))
                    committed.extend(range(n, n + 10))
            conn.close()

        write(1, 1500)
        server.crash()  # immediate shutdown: the walsender dies, the slot's position may move back
        server.start()
        write(1501, 1500)
        server.restart()  # fast shutdown and start
        write(3001, 1000)
        # The test server runs with synchronous_commit=off: a crash may lose its last commits, so
        # the table after recovery is the truth. Everything in it must arrive, and nothing else.
        stored = {row[0] for row in server.execute("SELECT n FROM seqs", dbname="app")}
        assert len(stored) >= len(committed) - 1000
        found = wait_events(tmp_path / "gw", lambda e: {x["after"]["n"] for x in e} >= stored,
                            timeout=180, operations=("INSERT",))
        assert {e["after"]["n"] for e in found} == stored
    finally:
        server.stop(mode="immediate")


def test_config_problems_stop_the_gateway_with_a_fix(postgres, db: str, tmp_path: Path) -> None:
    from tests.harness.gateway import Gateway

    sql = _sql(postgres, db)
    sql("CREATE TABLE t (id int PRIMARY KEY)")
    postgres.execute("DROP ROLE IF EXISTS norepl")
    postgres.execute("CREATE ROLE norepl LOGIN PASSWORD 'secret'")
    postgres.execute("DROP ROLE IF EXISTS pwuser")
    postgres.execute("CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'right'")
    postgres.add_hba("host all pwuser 127.0.0.1/32 scram-sha-256")
    cases = [
        ({"user": "pwuser", "password": "wrong"}, "rejected the password of user 'pwuser'"),
        ({"user": "norepl", "password": "secret"}, "ALTER ROLE norepl WITH REPLICATION"),
        ({"create_slot": False, "slot_name": "missing_slot"}, "create it with SELECT pg_create_logical_replication_slot"),
        ({"database": "no_such_db"}, "check source.database"),
    ]
    for index, (source, expected) in enumerate(cases):
        workdir = tmp_path / f"case{index}"
        workdir.mkdir()
        gateway = Gateway(workdir, pg_profile(postgres, db, workdir, source=source)).start()
        assert gateway.wait(120) == 3, gateway.stderr()[-2000:]
        assert expected in gateway.stderr(), gateway.stderr()[-2000:]


def test_a_slot_in_use_is_reported_with_the_pid(postgres, db: str, tmp_path: Path) -> None:
    import psycopg2
    import psycopg2.extras

    from tests.harness.gateway import Gateway

    _sql(postgres, db)("CREATE TABLE t (id int PRIMARY KEY)")
    _sql(postgres, db)("CREATE PUBLICATION busy_pub FOR ALL TABLES")
    _sql(postgres, db)("SELECT pg_create_logical_replication_slot('busy', 'pgoutput')")
    holder = psycopg2.connect(postgres.dsn(dbname=db),
                              connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        cursor = holder.cursor()
        cursor.start_replication(slot_name="busy", options={"proto_version": "1", "publication_names": "busy_pub"})
        profile = pg_profile(postgres, db, tmp_path, slot="busy", publication="busy_pub",
                             source={"connection_timeout": "2s"})
        gateway = Gateway(tmp_path, profile).start()
        assert gateway.wait(120) == 3
        assert re.search(r"replication slot 'busy' .* is in use by PostgreSQL process \d+", gateway.stderr())
    finally:
        holder.close()


def test_stopping_with_sigterm_leaves_nothing_unconfirmed(postgres, db: str, tmp_path: Path) -> None:
    sql = _sql(postgres, db)
    sql("CREATE TABLE t (id int PRIMARY KEY)")
    gateway = start_streaming(postgres, db, tmp_path, pg_profile(postgres, db, tmp_path))
    sql("INSERT INTO t SELECT generate_series(1, 500)")
    found = wait_events(tmp_path, lambda e: len(e) >= 500)
    commit_lsn = max(str_to_lsn(e["position"]["lsn"]) for e in found)
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(60) == 0
    active, confirmed = slot_row(postgres, db, "gw_slot")
    assert not active and confirmed > commit_lsn  # the transaction's end, past its commit record
    assert len(events(tmp_path)) == 500


def test_table_column_and_row_filters_are_pushed_into_the_publication(postgres, db: str, tmp_path: Path) -> None:
    sql = _sql(postgres, db)
    sql("CREATE SCHEMA shop")
    sql("CREATE TABLE shop.orders (id int PRIMARY KEY, amount int, secret text, internal_note text)")
    sql("CREATE TABLE shop.audit_log (id int PRIMARY KEY)")
    sql("CREATE TABLE public.users (id int PRIMARY KEY, status text NOT NULL, email text)")
    sql("CREATE UNIQUE INDEX users_identity ON public.users (id, status)")
    sql("ALTER TABLE public.users REPLICA IDENTITY USING INDEX users_identity")  # the filter's column is in it
    sql("CREATE TABLE public.sessions (id int PRIMARY KEY)")
    profile = pg_profile(
        postgres, db, tmp_path,
        source={"tables": ["shop.*", "public.users"], "exclude_tables": ["*.audit_*"],
                "columns": {"shop.orders": ["*", "!internal_*", "!secret"], "public.users": ["id", "status"]},
                "row_filters": {"public.users": {"condition": "status = 'active'"}}})
    start_streaming(postgres, db, tmp_path, profile)
    published = postgres.execute("SELECT schemaname || '.' || tablename, attnames, rowfilter"
                                 " FROM pg_publication_tables WHERE pubname = 'gw_pub' ORDER BY 1", dbname=db)
    assert [(name, sorted(columns)) for name, columns, _ in published] == [
        ("public.users", ["id", "status"]), ("shop.orders", ["amount", "id"])]
    assert "active" in published[0][2]
    sql("INSERT INTO shop.orders VALUES (1, 10, 's', 'n')")
    sql("INSERT INTO shop.audit_log VALUES (1)")
    sql("INSERT INTO public.sessions VALUES (1)")
    sql("INSERT INTO public.users VALUES (1, 'active', 'a@x'), (2, 'blocked', 'b@x')")
    sql("UPDATE public.users SET status = 'active' WHERE id = 2")  # now matches: arrives as an INSERT
    sql("UPDATE public.users SET status = 'gone' WHERE id = 1")  # no longer matches: arrives as a DELETE
    sql("INSERT INTO shop.orders VALUES (2, 20, 's', 'n')")
    found = wait_events(tmp_path, lambda e: any(x["table"] == "orders" and x["after"]["id"] == 2 for x in e))
    assert [(e["table"], e["operation"], e["after"] or e["before"]) for e in found] == [
        ("orders", "INSERT", {"id": 1, "amount": 10}),
        ("users", "INSERT", {"id": 1, "status": "active"}),
        ("users", "INSERT", {"id": 2, "status": "active"}),
        ("users", "DELETE", {"id": 1, "status": "active"}),  # the old identity
        ("orders", "INSERT", {"id": 2, "amount": 20}),
    ]


def test_schema_changes_become_ddl_events_and_block_waits_for_approval(postgres, db: str, tmp_path: Path) -> None:
    sql = _sql(postgres, db)
    sql("CREATE TABLE t (id int PRIMARY KEY, a text, b int, c text)")
    profile = pg_profile(postgres, db, tmp_path, schema={"evolution": {"compatible_changes": "warn",
                                                                          "breaking_changes": "block"}})
    start_streaming(postgres, db, tmp_path, profile)
    sql("INSERT INTO t VALUES (1, 'a', 1, 'c')")
    sql("ALTER TABLE t ADD COLUMN d text")
    sql("INSERT INTO t VALUES (2, 'a', 2, 'c', 'd')")
    found = wait_events(tmp_path, lambda e: any(x["operation"] == "INSERT" and x["after"]["id"] == 2 for x in e),
                        operations=("INSERT", "DDL"))
    ddl = [e for e in found if e["operation"] == "DDL"]
    assert len(ddl) == 1 and ddl[0]["ddl_type"] == "ALTER_TABLE" and ddl[0]["table"] == "t"
    assert ddl[0]["metadata"]["changes"] == [{"change": "add_column", "column": "d", "type_oid": 25, "typmod": -1}]
    assert ddl[0]["metadata"]["breaking"] is False
    assert found[-1]["after"] == {"id": 2, "a": "a", "b": 2, "c": "c", "d": "d"}

    sql("ALTER TABLE t RENAME COLUMN a TO a2")
    sql("ALTER TABLE t DROP COLUMN c")
    sql("ALTER TABLE t ALTER COLUMN b TYPE bigint")
    sql("INSERT INTO t VALUES (3, 'x', 3, 'd')")
    marker = tmp_path / "checkpoints" / "pgtest.schema-blocked.json"
    from tests.harness.gateway import wait_for

    wait_for(marker.exists, 90, "the pipeline to block on the breaking change")
    assert "rename_column" in marker.read_text()
    assert not any(e["operation"] == "INSERT" and e["after"]["id"] == 3 for e in events(tmp_path, ("INSERT",)))
    marker.unlink()  # approve
    found = wait_events(tmp_path, lambda e: any(x["operation"] == "INSERT" and x["after"]["id"] == 3 for x in e),
                        operations=("INSERT", "DDL"))
    changes = [c for e in found if e["operation"] == "DDL" for c in e["metadata"]["changes"]]
    assert {"change": "rename_column", "from": "a", "to": "a2"} in changes
    assert {"change": "drop_column", "column": "c"} in changes
    assert any(c["change"] == "type_change" and c["column"] == "b" and c["to_type_oid"] == 20 for c in changes)
    assert found[-1]["after"] == {"id": 3, "a2": "x", "b": 3, "d": "d"}


def test_heartbeats_advance_an_idle_slot_while_other_databases_write(postgres, db: str, tmp_path: Path) -> None:
    from tests.harness.gateway import wait_for

    _sql(postgres, db)("CREATE TABLE t (id int PRIMARY KEY)")
    profile = pg_profile(postgres, db, tmp_path, source={"heartbeat_enabled": True, "heartbeat_interval_seconds": 1})
    gateway = start_streaming(postgres, db, tmp_path, profile)
    beats = wait_events(tmp_path, lambda e: len(e) >= 2, operations=("HEARTBEAT",))
    assert beats[0]["metadata"]["slot"] == "gw_slot" and beats[0]["metadata"]["latency_ms"] >= 0
    postgres.execute("CREATE TABLE IF NOT EXISTS elsewhere (n int)")  # WAL of another database
    postgres.execute("INSERT INTO elsewhere SELECT generate_series(1, 50000)")
    target = int(postgres.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])
    wait_for(lambda: slot_row(postgres, db, "gw_slot")[1] >= target, 90, "the idle slot to move past other WAL")
    checkpoint = tmp_path / "checkpoints" / "pgtest.json"
    import json

    wait_for(lambda: str_to_lsn(json.loads(checkpoint.read_text())["position"]["end_lsn"]) >= target, 60,
             "the checkpoint to follow the heartbeats")
    assert gateway.metric("savegress_replication_slot_lag_bytes") >= 0
    assert gateway.metric("savegress_replication_lag_seconds") >= 0
    assert len(events(tmp_path)) == 0  # no row events were invented


def test_start_position_overrides_the_checkpoint(postgres, db: str, tmp_path: Path) -> None:
    sql = _sql(postgres, db)
    sql("CREATE TABLE t (id int PRIMARY KEY)")
    profile = pg_profile(postgres, db, tmp_path)
    assert start_streaming(postgres, db, tmp_path, profile).stop() == 0  # slot, publication, checkpoint
    sql("INSERT INTO t VALUES (1)")
    lsn = postgres.execute("SELECT pg_current_wal_insert_lsn()::text", dbname=db)[0][0]  # past row 1's commit
    sql("INSERT INTO t VALUES (2)")
    profile["source"]["start_position"] = lsn
    start_streaming(postgres, db, tmp_path, profile)
    found = wait_events(tmp_path, lambda e: len(e) >= 1)
    assert [e["after"]["id"] for e in found] == [2]


def test_the_error_policy_halts_the_gateway_on_a_breaking_change(postgres, db: str, tmp_path: Path) -> None:
    sql = _sql(postgres, db)
    sql("CREATE TABLE t (id int PRIMARY KEY, a text)")
    profile = pg_profile(postgres, db, tmp_path, schema={"evolution": {"breaking_changes": "error"}})
    gateway = start_streaming(postgres, db, tmp_path, profile)
    sql("INSERT INTO t VALUES (1, 'a')")
    wait_events(tmp_path, lambda e: len(e) == 1)
    sql("ALTER TABLE t DROP COLUMN a")
    sql("INSERT INTO t VALUES (2)")
    assert gateway.wait(180) != 0
    assert "breaking schema change of public.t" in gateway.stderr()
    assert [e["after"]["id"] for e in events(tmp_path)] == [1]  # nothing past the change
