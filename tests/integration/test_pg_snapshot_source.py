"""The initial snapshot of the PostgreSQL source through a real gateway."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.harness.gateway import Gateway, alive, children_of, wait_for
from tests.harness.pg_source import events, pg_profile, release, start_streaming, wait_events
from tests.harness.verify import file_sink_events


@pytest.fixture()
def db(postgres, pg_database: str):
    yield pg_database
    release(postgres, pg_database)


def _apply(found: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The table state a consumer applying the events in order ends with."""
    state: dict[int, dict[str, Any]] = {}
    for event in found:
        if event["operation"] in ("SNAPSHOT", "INSERT", "UPDATE"):
            if event["before"] and event["before"].get("id") != event["after"]["id"]:
                state.pop(event["before"]["id"], None)
            state[event["after"]["id"]] = event["after"]
        elif event["operation"] == "DELETE":
            state.pop(event["before"]["id"], None)
    return state


def _start_while_writing(postgres: Any, db: str, tmp_path: Path, profile: dict[str, Any],
                         new_balance: Callable[[int], int],
                         more: Callable[[Any, int], None] = lambda cur, n: None) -> tuple[Gateway, int]:
    """Start ``profile``'s gateway while a writer changes ``acct`` (20,000 rows): every write
    updates a row, every 7th deletes one, every 5th inserts one with balance ``new_balance(n)``,
    and ``more(cursor, n)`` runs, while the slot is created and the snapshot read, until 1,000
    more writes happened while streaming. Returns the gateway and the number of writes."""
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        conn = psycopg2.connect(postgres.dsn(dbname=db))
        conn.autocommit = True
        n = 0
        with conn.cursor() as cur:
            while not stop.is_set():
                n += 1
                cur.execute("UPDATE acct SET balance = balance + 1, note = %s WHERE id = %s", (f"w{n}", n % 20000 + 1))
                if n % 7 == 0:
                    cur.execute("DELETE FROM acct WHERE id = %s", (n % 20000 + 1,))
                if n % 5 == 0:
                    cur.execute("INSERT INTO acct VALUES (%s, %s, 'new')", (100000 + n, new_balance(n)))
                more(cur, n)
                written[0] = n
                time.sleep(0.002)
        conn.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    gateway = start_streaming(postgres, db, tmp_path, profile, timeout=180)
    streaming_at = written[0]  # a slow start may let the writer get far before the slot exists
    wait_for(lambda: written[0] > streaming_at + 1000, 120, "the writer to write while streaming")
    stop.set()
    thread.join(30)
    return gateway, written[0]


def test_snapshot_with_concurrent_writes_ends_in_the_final_table_state(postgres, db: str, tmp_path: Path) -> None:
    postgres.execute("CREATE TABLE acct (id int PRIMARY KEY, balance int, note text)", dbname=db)
    postgres.execute("INSERT INTO acct SELECT g, 0, 'start' FROM generate_series(1, 20000) g", dbname=db)
    profile = pg_profile(postgres, db, tmp_path, snapshot={"enabled": True, "batch_size": 3000})
    gateway, written = _start_while_writing(postgres, db, tmp_path, profile, lambda n: 1)
    final = {row[0]: {"id": row[0], "balance": row[1], "note": row[2]}
             for row in postgres.execute("SELECT id, balance, note FROM acct", dbname=db)}
    found = wait_events(tmp_path, lambda e: _apply(e) == final, timeout=180,
                        what="the events to add up to the final table state")
    snapshot_rows = [e for e in found if e["operation"] == "SNAPSHOT"]
    assert 0 < len(snapshot_rows) <= 20000 + written // 5
    first_change = next(i for i, e in enumerate(found) if e["operation"] != "SNAPSHOT")
    assert all(e["operation"] == "SNAPSHOT" for e in found[:first_change])
    assert all(e["operation"] != "SNAPSHOT" for e in found[first_change:]), "snapshot rows after stream events"
    assert len({e["id"] for e in snapshot_rows}) == len(snapshot_rows)
    assert gateway.stop() == 0


def test_row_filters_apply_to_the_snapshot_as_to_the_stream(postgres, db: str, tmp_path: Path) -> None:
    postgres.execute("CREATE TABLE acct (id int PRIMARY KEY, balance int, note text)", dbname=db)
    postgres.execute("ALTER TABLE acct REPLICA IDENTITY FULL", dbname=db)  # the filter may use any column
    postgres.execute("INSERT INTO acct SELECT g, g % 4, 'start' FROM generate_series(1, 20000) g", dbname=db)
    profile = pg_profile(postgres, db, tmp_path, snapshot={"enabled": True, "batch_size": 3000},
                         source={"tables": ["public.acct"],
                                 "row_filters": {"public.acct": {"condition": "balance % 4 = 0"}}})
    # rows move in and out of the filter while the snapshot is taken and read
    gateway, written = _start_while_writing(postgres, db, tmp_path, profile, lambda n: n % 4)
    final = {row[0]: {"id": row[0], "balance": row[1], "note": row[2]}
             for row in postgres.execute("SELECT id, balance, note FROM acct WHERE balance % 4 = 0", dbname=db)}
    found = wait_events(tmp_path, lambda e: _apply(e) == final, timeout=180,
                        what="the events to add up to the filtered final table state")
    snapshot_rows = [e["after"] for e in found if e["operation"] == "SNAPSHOT"]
    assert 0 < len(snapshot_rows) <= 5000 + written
    assert all(row["balance"] % 4 == 0 for row in snapshot_rows)
    assert all(e["operation"] == "SNAPSHOT" for e in found[:len(snapshot_rows)])
    assert gateway.stop() == 0


def test_exit_after_stops_once_the_snapshot_is_delivered_and_the_next_start_streams(
        postgres, db: str, tmp_path: Path) -> None:
    postgres.execute("CREATE TABLE a (id int PRIMARY KEY, v text)", dbname=db)
    postgres.execute("CREATE TABLE b (k text PRIMARY KEY)", dbname=db)
    postgres.execute("INSERT INTO a SELECT g, 'v' FROM generate_series(1, 5000) g", dbname=db)
    postgres.execute("INSERT INTO b VALUES ('x'), ('y')", dbname=db)
    profile = pg_profile(postgres, db, tmp_path, snapshot={"enabled": True, "batch_size": 1000, "exit_after": True})
    gateway = Gateway(tmp_path, profile).start()
    assert gateway.wait(180) == 0, gateway.stderr()[-2000:]
    found = events(tmp_path)
    assert sorted(e["after"]["id"] for e in found if e["table"] == "a") == list(range(1, 5001))
    assert sorted(e["after"]["k"] for e in found if e["table"] == "b") == ["x", "y"]
    assert all(e["operation"] == "SNAPSHOT" for e in found)
    postgres.execute("INSERT INTO a VALUES (5001, 'after')", dbname=db)
    profile["snapshot"]["exit_after"] = False
    gateway = start_streaming(postgres, db, tmp_path, profile)
    later = wait_events(tmp_path, lambda e: any(x["operation"] == "INSERT" for x in e))
    assert [e["after"]["id"] for e in later if e["operation"] == "INSERT"] == [5001]
    assert len([e for e in later if e["operation"] == "SNAPSHOT"]) == 5002  # not read again
    assert gateway.stop() == 0


def _stored_position(checkpoint: Path) -> dict[str, Any]:
    """The position in the checkpoint file (``{}`` before the first). The gateway replaces the
    file atomically, so it can be read while the gateway runs, unlike the sink, whose last line
    may be half-written."""
    return json.loads(checkpoint.read_text())["position"] if checkpoint.exists() else {}


def _checkpointed_key(checkpoint: Path, table: str) -> int:
    """The last key of ``table`` (an int key) the checkpoint claims as delivered while the
    snapshot reads it (0 before that)."""
    key = _stored_position(checkpoint).get("snapshot", {}).get("tables", {}).get(table)
    return int(key[0]) if key else 0


def _snapshot_delivered(checkpoint: Path) -> bool:
    """A checkpoint past the end of the snapshot: every SNAPSHOT row is in the sink, acknowledged,
    so (with no writes to the database) the sink is no longer written."""
    position = _stored_position(checkpoint)
    return bool(position) and "snapshot" not in position


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """``ids`` as runs of consecutive values, ``[1, 2, 3, 2, 3]`` → ``[(1, 3), (2, 3)]``: short
    enough to compare and to show when they differ."""
    runs: list[tuple[int, int]] = []
    for value in ids:
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


def _resumed_runs(delivered: int, rows: int, key: int) -> list[tuple[int, int]]:
    """The runs (:func:`_runs`) of the ``delivered`` rows of a table keyed ``1..rows`` that a first
    run read in key order until killed with ``key`` checkpointed, and a restart read after ``key``:
    what the first run delivered after ``key`` comes twice, nothing else."""
    first_run = delivered - (rows - key)
    return _runs([*range(1, first_run + 1), *range(key + 1, rows + 1)])


def test_a_snapshot_killed_half_way_resumes_after_the_last_checkpointed_row(postgres, db: str,
                                                                           tmp_path: Path) -> None:
    postgres.execute("CREATE TABLE done_first (id int PRIMARY KEY)", dbname=db)
    postgres.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)", dbname=db)
    postgres.execute("INSERT INTO done_first SELECT generate_series(1, 100)", dbname=db)
    postgres.execute("INSERT INTO big SELECT g, repeat('p', 200) FROM generate_series(1, 300000) g", dbname=db)
    profile = pg_profile(postgres, db, tmp_path, snapshot={"enabled": True, "batch_size": 2000},
                         checkpoint={"interval": "200ms"})
    gateway = Gateway(tmp_path, profile).start()
    checkpoint = tmp_path / "checkpoints" / "pgtest.json"
    # Progress from the checkpoint, not the sink: parsing the growing sink takes long enough for the
    # snapshot to get near its end (or past it) before the kill, and may meet a half-written line.
    wait_for(lambda: _checkpointed_key(checkpoint, "public.big") >= 20_000, 180,
             "a checkpoint part-way through table big")
    os.killpg(gateway.pid, signal.SIGKILL)
    gateway.wait(30)
    key = _checkpointed_key(checkpoint, "public.big")
    assert key >= 20_000, "table big was no longer in progress in the checkpoint at the kill"
    release(postgres, db)
    gateway = start_streaming(postgres, db, tmp_path, profile)
    wait_for(lambda: _snapshot_delivered(checkpoint), 300, "a checkpoint past the end of the resumed snapshot")
    found = events(tmp_path)
    big = [e["after"]["id"] for e in found if e["table"] == "big"]
    assert sorted(set(big)) == list(range(1, 300001))
    assert _runs(big) == _resumed_runs(len(big), 300000, key), \
        f"not resumed right after the checkpointed key {key} (started over?)"
    assert sorted(e["after"]["id"] for e in found if e["table"] == "done_first") == list(range(1, 101))
    assert '"resumed": true' in gateway.stderr()
    assert gateway.stop() == 0


def _children_named(pid: int, name: str) -> list[int]:
    """Live children of ``pid`` whose process name (``/proc/<pid>/comm``) is ``name``."""
    named = []
    for child in children_of(pid):
        try:
            if (Path("/proc") / str(child) / "comm").read_text().strip() == name and alive(child):
                named.append(child)
        except OSError:
            pass
    return named


def _tables_state(found: list[dict[str, Any]]) -> dict[str, Any]:
    """Per table, the state a consumer applying the events in order ends with: rows by ``id``,
    or, for ``audit`` (no key, inserts only), the multiset of its rows."""
    state: dict[str, Any] = {}
    for table in {e["table"] for e in found}:
        rows = [e for e in found if e["table"] == table]
        if table == "audit":
            state[table] = Counter(tuple(sorted(e["after"].items())) for e in rows
                                   if e["operation"] in ("SNAPSHOT", "INSERT"))
        else:
            state[table] = _apply(rows)
    return state


def _database_state(postgres: Any, db: str) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for table, columns in (("acct", ("id", "balance", "note")), ("ledger", ("id", "amount")), ("cfg", ("id", "v"))):
        rows = postgres.execute(f"SELECT {', '.join(columns)} FROM {table}", dbname=db)
        if rows:
            state[table] = {row[0]: dict(zip(columns, row)) for row in rows}
    state["audit"] = Counter(tuple(sorted({"id": row[0], "v": row[1]}.items()))
                             for row in postgres.execute("SELECT id, v FROM audit", dbname=db))
    return state


def test_a_parallel_snapshot_with_concurrent_writes_ends_in_the_final_state_of_every_table(
        postgres, db: str, tmp_path: Path) -> None:
    for statement in ("CREATE TABLE acct (id int PRIMARY KEY, balance int, note text)",
                      "INSERT INTO acct SELECT g, 0, 'start' FROM generate_series(1, 20000) g",
                      "CREATE TABLE ledger (id int PRIMARY KEY, amount int)",
                      "INSERT INTO ledger SELECT g, g FROM generate_series(1, 15000) g",
                      "CREATE TABLE cfg (id int PRIMARY KEY, v text)",
                      "INSERT INTO cfg VALUES (1, 'a'), (2, 'b')",
                      "CREATE TABLE empty_t (id int PRIMARY KEY)",
                      "CREATE TABLE audit (id int, v text)",  # no key: inserts only
                      "INSERT INTO audit SELECT g % 50, 'old' FROM generate_series(1, 300) g"):
        postgres.execute(statement, dbname=db)

    def more(cur: Any, n: int) -> None:
        cur.execute("UPDATE ledger SET amount = amount - 1 WHERE id = %s", (n % 15000 + 1,))
        if n % 3 == 0:
            cur.execute("INSERT INTO audit VALUES (%s, 'new')", (n % 50,))

    profile = pg_profile(postgres, db, tmp_path, snapshot={"enabled": True, "batch_size": 2000, "parallel_workers": 3})
    gateway, written = _start_while_writing(postgres, db, tmp_path, profile, lambda n: 1, more)
    final = _database_state(postgres, db)
    found = wait_events(tmp_path, lambda e: _tables_state(e) == final, timeout=180,
                        what="the events to add up to the final state of every table")
    snapshot = [e for e in found if e["operation"] == "SNAPSHOT"]
    first_change = next(i for i, e in enumerate(found) if e["operation"] != "SNAPSHOT")
    assert len(snapshot) == first_change, "snapshot rows after stream events"
    assert len({e["id"] for e in snapshot}) == len(snapshot)
    assert {e["table"] for e in snapshot} == {"acct", "ledger", "cfg", "audit"}
    assert 300 <= sum(e["table"] == "audit" for e in snapshot) <= 300 + written // 3
    # the big tables were read at once: their snapshot rows interleave
    spans = {table: [i for i, e in enumerate(snapshot) if e["table"] == table] for table in ("acct", "ledger")}
    assert spans["acct"][0] < spans["ledger"][-1] and spans["ledger"][0] < spans["acct"][-1]
    assert '"readers": 3' in gateway.stderr()
    assert gateway.stop() == 0


@pytest.mark.timeout(400)
def test_a_parallel_snapshot_killed_half_way_resumes_each_table_after_its_checkpointed_key(
        postgres, db: str, tmp_path: Path) -> None:
    postgres.execute("CREATE TABLE done_first (id int PRIMARY KEY)", dbname=db)
    postgres.execute("INSERT INTO done_first SELECT generate_series(1, 100)", dbname=db)
    big = {"big1": 120_000, "big2": 100_000}
    for table, rows in big.items():
        postgres.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, pad text)", dbname=db)
        postgres.execute(f"INSERT INTO {table} SELECT g, repeat('p', 200) FROM generate_series(1, {rows}) g",
                         dbname=db)
    profile = pg_profile(postgres, db, tmp_path, snapshot={"enabled": True, "batch_size": 2000, "parallel_workers": 3},
                         checkpoint={"interval": "200ms"})
    gateway = Gateway(tmp_path, profile).start()
    checkpoint = tmp_path / "checkpoints" / "pgtest.json"
    wait_for(lambda: all(_checkpointed_key(checkpoint, f"public.{t}") > 5000 for t in big), 180,
             "both big tables to be part-way through in a checkpoint")
    [source] = _children_named(gateway.pid, "sg-source")
    readers = _children_named(source, "sg-snap-reader")
    assert len(readers) == 3
    os.kill(source, signal.SIGKILL)  # its reader processes must not outlive it
    wait_for(lambda: not any(alive(pid) for pid in readers), 10, "the reader processes to die with the source")
    os.killpg(gateway.pid, signal.SIGKILL)
    gateway.wait(30)
    progress = _stored_position(checkpoint)["snapshot"]
    first_run = len(file_sink_events(tmp_path / "out" / "events.jsonl"))
    release(postgres, db)
    gateway = start_streaming(postgres, db, tmp_path, profile)
    wait_for(lambda: _snapshot_delivered(checkpoint), 300, "a checkpoint past the end of the resumed snapshot")
    found = events(tmp_path)
    for table, rows in big.items():
        assert sorted({e["after"]["id"] for e in found if e["table"] == table}) == list(range(1, rows + 1))
        again = [e["after"]["id"] for e in found[first_run:] if e["table"] == table]
        if f"public.{table}" in progress["done"]:
            assert again == []
        else:  # resumed right after the checkpointed key, in key order
            assert again == list(range(int(progress["tables"][f"public.{table}"][0]) + 1, rows + 1))
    assert sorted(e["after"]["id"] for e in found if e["table"] == "done_first") == list(range(1, 101))
    assert len(found) < sum(big.values()) + 100 + 50_000, "the snapshot started over instead of resuming"
    assert '"resumed": true' in gateway.stderr()
    assert gateway.stop() == 0


def test_readers_that_cannot_import_the_snapshot_leave_no_slot_behind_and_a_later_start_snapshots(
        postgres, db: str, tmp_path: Path) -> None:
    role = f"lim_{db[2:10]}"
    postgres.execute(f"CREATE ROLE {role} LOGIN REPLICATION CONNECTION LIMIT 3")  # query + replication + 1 reader
    try:
        postgres.execute(f'GRANT CREATE ON DATABASE "{db}" TO {role}', dbname=db)
        for table in ("t", "u", "v"):
            postgres.execute(f"CREATE TABLE {table} (id int PRIMARY KEY); ALTER TABLE {table} OWNER TO {role}",
                             dbname=db)
        postgres.execute("INSERT INTO t SELECT generate_series(1, 1000)", dbname=db)
        profile = pg_profile(postgres, db, tmp_path, source={"user": role, "tables": ["public.t", "public.u", "public.v"]},
                             snapshot={"enabled": True, "parallel_workers": 3})
        gateway = Gateway(tmp_path, profile).start()
        assert gateway.wait(120) != 0  # the crash loop halts it
        assert "snapshot.parallel_workers readers need as many free connections" in gateway.stderr()
        assert postgres.execute("SELECT 1 FROM pg_replication_slots WHERE database = %s", (db,)) == []
        assert events(tmp_path) == []
        postgres.execute(f"ALTER ROLE {role} CONNECTION LIMIT 5")
        gateway = start_streaming(postgres, db, tmp_path, profile)
        found = wait_events(tmp_path, lambda e: len(e) >= 1000, what="the snapshot of t")
        assert sorted(e["after"]["id"] for e in found if e["operation"] == "SNAPSHOT") == list(range(1, 1001))
        assert gateway.stop() == 0
    finally:
        release(postgres, db)
        postgres.execute(f"DROP OWNED BY {role}", dbname=db)
        postgres.execute(f"DROP ROLE {role}")
