"""The snapshot reader against the session PostgreSQL: consistency with the slot's exported
snapshot under concurrent writes, no gap to the stream, resume after a key, identical JSON."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import psycopg2
import psycopg2.extras
import pytest

from savegress_gw.components import Batch
from savegress_gw.envelope import encode, now_iso, timestamp_ms
from savegress_gw.postgres.connection import connect_kwargs
from savegress_gw.postgres.pgoutput import Commit, Delete, Insert, Relation, Update, decode
from savegress_gw.postgres.snapshot import SnapshotError, SnapshotReader, parse_copy_text
from savegress_gw.postgres.snapshot_load import Envelope, InitialSnapshot, Progress, ThreadReader
from savegress_gw.postgres.snapshot_proc import open_process_readers
from savegress_gw.postgres.types import RowDecoder
from tests.harness.gateway import alive, wait_for
from tests.integration.pg_type_cases import SETUP, expected_rows, insert_statements

pytestmark = pytest.mark.timeout(240)


class Slot:
    """A TEMPORARY pgoutput slot whose exported snapshot stays importable until ``stream``."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(
            dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection, **connect_kwargs()
        )
        self.cur = self.conn.cursor()
        self.cur.execute(
            "CREATE_REPLICATION_SLOT snap_slot TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
        )
        _, consistent_point, self.snapshot_name, _ = self.cur.fetchone()
        assert self.snapshot_name

    def stream(self, commits: int, timeout: float = 60.0) -> list:
        self.cur.start_replication(
            "snap_slot", options={"proto_version": "1", "publication_names": "snap_pub"}
        )
        messages: list = []
        deadline = time.monotonic() + timeout
        while sum(isinstance(m, Commit) for m in messages) < commits:
            raw = self.cur.read_message()
            if raw is None:
                assert time.monotonic() < deadline, f"stream stalled: {messages}"
                select.select([self.cur], [], [], 0.5)
                continue
            messages.append(decode(raw.payload))
        return messages

    def close(self) -> None:
        self.conn.close()


@pytest.fixture()
def db(postgres, pg_database) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(postgres.dsn(dbname=pg_database), **connect_kwargs())
    conn.autocommit = True
    yield conn
    conn.close()


def run(conn, *statements: str) -> None:
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def read_all(reader: SnapshotReader, table, **kwargs) -> list:
    return [item for batch in reader.iter_table(table, **kwargs) for item in batch]


def test_snapshot_is_the_exported_state_and_the_stream_continues_it(
    postgres, pg_database, db
) -> None:
    run(
        db,
        "CREATE TABLE acc (id int PRIMARY KEY, owner text, balance numeric(12,2), doc jsonb)",
        "INSERT INTO acc SELECT g, 'owner ' || g, g * 1.5, jsonb_build_object('g', g)"
        " FROM generate_series(1, 2500) g",
        "CREATE PUBLICATION snap_pub FOR TABLE acc",
    )
    before = {
        i: {"id": i, "owner": f"owner {i}", "balance": f"{i * 1.5:.2f}", "doc": {"g": i}}
        for i in range(1, 2501)
    }
    slot = Slot(postgres.dsn(dbname=pg_database))
    try:
        reader = SnapshotReader(postgres.dsn(dbname=pg_database), slot.snapshot_name)
        batches = reader.iter_table(("public", "acc"), batch_size=1000)
        first = next(batches)
        # a writer commits after the export, between the reader's batches
        run(
            db,
            "UPDATE acc SET balance = -1 WHERE id % 10 = 0",
            "DELETE FROM acc WHERE id BETWEEN 1990 AND 2010",
            "INSERT INTO acc VALUES (9999, 'late', 0, '{}')",
        )
        rest = [item for batch in batches for item in batch]
        reader.close()
        assert [len(first)] + [len(rest)] == [1000, 1500]
        rows = [row for row, _ in first + rest]
        assert rows == [before[i] for i in range(1, 2501)]
        assert [pk for _, pk in first[:3]] == [("1",), ("2",), ("3",)]

        # no gap, no overlap: the snapshot plus the stream from the slot is the final table
        state = {row["id"]: row for row in rows}
        messages = slot.stream(commits=3)
        (relation,) = [m for m in messages if isinstance(m, Relation)]
        decoder = RowDecoder(relation)
        for message in messages:
            if isinstance(message, (Insert, Update)):
                row = decoder.decode(message.new)[0]
                state[row["id"]] = row
            elif isinstance(message, Delete):
                del state[decoder.decode_key(message.old)["id"]]
    finally:
        slot.close()
    with SnapshotReader(postgres.dsn(dbname=pg_database), None) as fresh:
        final = {row["id"]: row for row, _ in read_all(fresh, ("public", "acc"))}
    assert state == final
    assert len(final) == 2500 - 21 + 1 and final[10]["balance"] == "-1.00"


def test_resume_after_a_key_and_key_order(postgres, pg_database, db) -> None:
    run(
        db,
        # the primary key's column order differs from the table's
        "CREATE TABLE ev (tenant text, seq int, payload text, PRIMARY KEY (seq, tenant))",
        "INSERT INTO ev SELECT t, s, t || s FROM unnest(array['b', 'a', 'é']) t,"
        " generate_series(1, 40) s",
    )
    with SnapshotReader(postgres.dsn(dbname=pg_database), None) as reader:
        plan = reader.plan(("public", "ev"))
        assert plan.key_columns == ("seq", "tenant")
        assert [c.is_key for c in plan.relation.columns] == [True, True, False]
        everything = read_all(reader, ("public", "ev"), batch_size=7)
        keys = [pk for _, pk in everything]
        assert len(keys) == 120 and keys[:3] == [("1", "a"), ("1", "b"), ("1", "é")]
        assert [(row["seq"], row["tenant"]) for row, _ in everything] == [
            (int(s), t) for s, t in keys
        ]
        resumed = read_all(reader, ("public", "ev"), after_pk=keys[49], batch_size=1000)
        assert resumed == everything[50:]
        assert read_all(reader, ("public", "ev"), after_pk=keys[-1]) == []
        with pytest.raises(ValueError, match="after_pk has 1 values"):
            read_all(reader, ("public", "ev"), after_pk=("1",))


def test_a_condition_restricts_the_rows_and_resumes_inside_them(postgres, pg_database, db) -> None:
    run(
        db,
        "CREATE TABLE cust (id int PRIMARY KEY, region text, score int)",
        "INSERT INTO cust SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, g"
        " FROM generate_series(1, 300) g",
    )
    condition = "region = 'eu' AND score > 30"
    with SnapshotReader(postgres.dsn(dbname=pg_database), None) as reader:
        rows = read_all(reader, ("public", "cust"), batch_size=7, condition=condition)
        assert [row["id"] for row, _ in rows] == list(range(33, 301, 3))
        resumed = read_all(reader, ("public", "cust"), after_pk=rows[9][1], condition=condition)
        assert resumed == rows[10:]


def test_tables_without_primary_key(postgres, pg_database, db) -> None:
    run(
        db,
        "CREATE TABLE ix (code text NOT NULL, v int)",
        "CREATE UNIQUE INDEX ix_code ON ix (code)",
        "ALTER TABLE ix REPLICA IDENTITY USING INDEX ix_code",
        "INSERT INTO ix SELECT 'k' || lpad(g::text, 3, '0'), g FROM generate_series(1, 30) g",
        "CREATE TABLE heap (v int, g int GENERATED ALWAYS AS (v * 2) STORED)",
        "INSERT INTO heap (v) SELECT generate_series(1, 25)",
        "ALTER TABLE heap REPLICA IDENTITY FULL",
    )
    with SnapshotReader(postgres.dsn(dbname=pg_database), None) as reader:
        ix = read_all(reader, ("public", "ix"), after_pk=("k010",), batch_size=4)
        assert [row["v"] for row, _ in ix] == list(range(11, 31))
        assert reader.relation(("public", "ix")).replica_identity == "i"
        batches = list(reader.iter_table(("public", "heap"), batch_size=10))
        assert [len(batch) for batch in batches] == [10, 10, 5]
        # generated columns are not replicated by pgoutput, so not read either
        assert sorted(row["v"] for batch in batches for row, pk in batch if pk == ()) == list(
            range(1, 26)
        )
        assert [c.name for c in reader.relation(("public", "heap")).columns] == ["v"]
        assert all(c.is_key for c in reader.relation(("public", "heap")).columns)  # FULL
        with pytest.raises(ValueError, match="cannot be resumed"):
            read_all(reader, ("public", "heap"), after_pk=("1",))
        with pytest.raises(SnapshotError, match="public.nope does not exist"):
            reader.plan(("public", "nope"))


def test_snapshot_values_are_the_streamed_json(postgres, pg_database, db) -> None:
    run(db, *SETUP, *insert_statements())
    with SnapshotReader(postgres.dsn(dbname=pg_database), None) as reader:
        rows = [row for row, _ in read_all(reader, ("public", "types"))]
        types = reader.plan(("public", "types")).decoder
    assert rows == expected_rows()
    # columns carry the declared type (the domain's own OID), as in the stream's Relation
    with psycopg2.connect(postgres.dsn(dbname=pg_database)) as conn, conn.cursor() as cur:
        cur.execute("SELECT 'posint'::regtype::oid")
        (domain_oid,) = cur.fetchone()
    assert next(c for c in types.relation.columns if c.name == "dm").type_oid == domain_oid


def test_encoded_snapshot_events_are_the_envelopes_orjson_writes(postgres, pg_database, db) -> None:
    run(db, *SETUP, *insert_statements(), "CREATE TABLE \"we\"\"ird\" (a text, b int, PRIMARY KEY (a, b))",
        "INSERT INTO \"we\"\"ird\" VALUES ('x\"y', 1), ('z', 2)", "CREATE TABLE heap2 (v text)",
        "INSERT INTO heap2 VALUES ('h1'), ('h2')")
    tables = [("public", "types"), ("public", 'we"ird'), ("public", "heap2")]
    with SnapshotReader(postgres.dsn(dbname=pg_database), None) as reader:
        snapshot = InitialSnapshot([ThreadReader(reader, Envelope(pg_database, "0/16B3748", now_iso()), 1000)],
                                   tables, Progress())
        batches = []
        while not snapshot.finished:
            batches.append(snapshot.read(3, 5.0))
        expected = []
        for schema, table in tables:
            plan = reader.plan((schema, table))
            for row, pk in read_all(reader, (schema, table)):
                meta = {"database": pg_database, "snapshot": True}
                if plan.key_columns:
                    meta["primary_key"] = list(plan.key_columns)
                expected.append({"id": None, "source": "postgres", "schema": schema, "table": table,
                                 "operation": "SNAPSHOT", "timestamp": None, "transaction_id": None,
                                 "position": {"lsn": "0/16B3748", "sequence": 0}, "before": None,
                                 "after": row, "metadata": meta})
    encoded = Batch.empty()
    for batch in batches:
        encoded.extend(batch)
    assert len(encoded) == len(expected) == len(expected_rows()) + 4
    for event, event_id, payload, stamp in zip(expected, encoded.ids, encoded.payloads, encoded.timestamps_ms):
        event["id"], event["timestamp"] = event_id, orjson.loads(payload)["timestamp"]
        assert payload == orjson.dumps(event)
        assert stamp == timestamp_ms(event["timestamp"])
    reference = encode(expected, 0)
    assert encoded.keys == reference.keys and encoded.ids == reference.ids
    assert encoded.ids[-4:] == ['snap-public.we"ird:x"y:1', 'snap-public.we"ird:z:2',
                                "snap-public.heap2:#1", "snap-public.heap2:#2"]
    assert encoded.keys[-4:-2] == ['we"ird:x"y:1', 'we"ird:z:2']
    assert set(encoded.operations) == {"SNAPSHOT"}


def test_escaped_text_round_trips(postgres, pg_database, db) -> None:
    tricky = "tab\there\nnew\\line\r\b\f\v \\N end ü"
    run(db, "CREATE TABLE s (id int PRIMARY KEY, v text, w text)")
    with db.cursor() as cur:
        cur.execute("INSERT INTO s VALUES (1, %s, NULL), (2, '\\N', '')", (tricky,))
    with SnapshotReader(postgres.dsn(dbname=pg_database), None) as reader:
        rows = [row for row, _ in read_all(reader, ("public", "s"))]
    assert rows == [{"id": 1, "v": tricky, "w": None}, {"id": 2, "v": "\\N", "w": ""}]
    assert parse_copy_text("a\\tb\t\\N\t\n\\\\N\tx\n") == [["a\tb", None, ""], ["\\N", "x"]]


def test_a_row_of_one_empty_string_is_read(postgres, pg_database, db) -> None:
    run(db, "CREATE TABLE one (k text PRIMARY KEY)", "INSERT INTO one VALUES (''), ('a')",
        "CREATE TABLE bare (v text)", "INSERT INTO bare VALUES (''), (''), (NULL)")
    with SnapshotReader(postgres.dsn(dbname=pg_database), None) as reader:
        assert read_all(reader, ("public", "one"), batch_size=1) == [({"k": ""}, ("",)), ({"k": "a"}, ("a",))]
        assert sorted(read_all(reader, ("public", "bare")), key=str) == [
            ({"v": ""}, ()), ({"v": ""}, ()), ({"v": None}, ())]


def test_an_unknown_or_expired_snapshot_is_a_clear_error(postgres, pg_database) -> None:
    unknown = "cannot import snapshot '00000003-0000FFFF-1'.*invalid"
    with pytest.raises(SnapshotError, match=unknown):
        SnapshotReader(postgres.dsn(dbname=pg_database), "00000003-0000FFFF-1")
    slot = Slot(postgres.dsn(dbname=pg_database))
    name = slot.snapshot_name
    slot.cur.execute("IDENTIFY_SYSTEM")  # any command on the exporter ends the snapshot
    slot.cur.fetchall()
    try:
        with pytest.raises(SnapshotError, match="must stay open and idle"):
            SnapshotReader(postgres.dsn(dbname=pg_database), name)
    finally:
        slot.close()


def test_several_readers_share_one_exported_snapshot(postgres, pg_database, db) -> None:
    run(
        db,
        "CREATE TABLE a (id int PRIMARY KEY, v int)",
        "CREATE TABLE b (id int PRIMARY KEY, v int)",
        "INSERT INTO a SELECT g, g FROM generate_series(1, 100) g",
        "INSERT INTO b SELECT g, -g FROM generate_series(1, 50) g",
    )
    slot = Slot(postgres.dsn(dbname=pg_database))
    try:
        readers = [SnapshotReader(postgres.dsn(dbname=pg_database), slot.snapshot_name)
                   for _ in range(2)]
    finally:
        slot.close()  # the importers keep the snapshot for their whole transaction
    run(db, "DELETE FROM a", "INSERT INTO b VALUES (51, 0)")
    try:
        a = read_all(readers[0], ("public", "a"), batch_size=30)
        b = read_all(readers[1], ("public", "b"), batch_size=30)
    finally:
        for reader in readers:
            reader.close()
    assert [row["v"] for row, _ in a] == list(range(1, 101))
    assert [row["v"] for row, _ in b] == [-g for g in range(1, 51)]


def _columns(batches: list) -> list:
    """Encoded batches without ``ingest_ns`` (the time each was read)."""
    return [(b.payloads, b.keys, b.ids, b.operations, b.schemas, b.tables, b.timestamps_ms, keys)
            for b, keys in batches]


def test_a_reader_process_sends_the_events_an_in_process_reader_makes(postgres, pg_database, db) -> None:
    run(db, *SETUP, *insert_statements(), "CREATE TABLE heap2 (v text)", "INSERT INTO heap2 VALUES ('h1'), ('h2')")
    dsn = postgres.dsn(dbname=pg_database)
    envelope = Envelope(pg_database, "0/16B3748", now_iso())
    [process] = open_process_readers(dsn, None, 1, envelope, 3)
    local = ThreadReader(SnapshotReader(dsn, None), envelope, 3)
    try:
        for table in (("public", "types"), ("public", "heap2")):
            sent = list(process.batches(table, None, None))
            assert len(sent) > 1 or table[1] == "heap2"
            assert _columns(sent) == _columns(list(local.batches(table, None, None)))
        with pytest.raises(SnapshotError, match="public.nope does not exist"):
            list(process.batches(("public", "nope"), None, None))
    finally:
        process.close()
        local.close()


def test_reader_processes_die_with_their_parent_and_leave_no_connection(postgres, pg_database, db) -> None:
    script = (
        "import sys, time\n"
        "from savegress_gw.postgres.snapshot_load import Envelope\n"
        "from savegress_gw.postgres.snapshot_proc import open_process_readers\n"
        "readers = open_process_readers(sys.stdin.readline().strip(), None, 2,\n"
        "                               Envelope('d', '0/1', '2026-11-27T12:00:00.000000Z'), 10)\n"
        "print(' '.join(str(reader.pid) for reader in readers), flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        parent.stdin.write(postgres.dsn(dbname=pg_database) + "\n")
        parent.stdin.flush()
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        backends = [pid for (pid,) in postgres.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND state = 'idle in transaction'", (pg_database,))]
        assert len(pids) == len(backends) == 2
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: not any(alive(pid) for pid in pids), 10, "the reader processes to die with their parent")
    wait_for(lambda: not postgres.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (backends,)), 10,
             "their server backends to end")
