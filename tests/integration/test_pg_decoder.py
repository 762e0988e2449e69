"""The pgoutput decoder on real replication output of the session PostgreSQL (temporary slots)."""

from __future__ import annotations

import pytest

from savegress_gw.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    Truncate,
    Update,
    lsn_to_str,
    str_to_lsn,
)
from savegress_gw.postgres.types import RowDecoder
from tests.harness.postgres import capture

pytestmark = pytest.mark.timeout(180)


def changes(messages: list) -> list:
    kinds = (Insert, Update, Delete, Truncate, LogicalMessage)
    return [m for m in messages if isinstance(m, kinds)]


def relations(messages: list) -> dict[int, Relation]:
    return {m.relid: m for m in messages if isinstance(m, Relation)}


def test_transaction_framing_and_positions(postgres, pg_database) -> None:
    messages = capture(
        postgres, pg_database,
        ["INSERT INTO t VALUES (1, 'a')", "INSERT INTO t VALUES (2, 'b'), (3, 'c')"],
        setup=["CREATE TABLE t (id int PRIMARY KEY, v text)"],
    )
    begins = [m for m in messages if isinstance(m, Begin)]
    commits = [m for m in messages if isinstance(m, Commit)]
    assert len(begins) == len(commits) == 2
    for begin, commit in zip(begins, commits):
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert begin.commit_ts_us == commit.commit_ts_us
        assert commit.flags == 0
    assert begins[0].xid < begins[1].xid
    assert commits[0].end_lsn <= begins[1].final_lsn
    # timestamps are Unix microseconds: compare with the server's own clock
    (now_us,) = postgres.execute(
        "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint", dbname=pg_database
    )[0]
    assert 0 <= now_us - commits[1].commit_ts_us < 60_000_000
    (current,) = postgres.execute("SELECT pg_current_wal_lsn()::text", dbname=pg_database)[0]
    assert commits[1].end_lsn <= str_to_lsn(current)
    assert str_to_lsn(lsn_to_str(commits[1].end_lsn)) == commits[1].end_lsn
    rel = next(iter(relations(messages).values()))
    assert (rel.namespace, rel.name, rel.replica_identity) == ("public", "t", "d")
    assert rel.columns == (Column("id", 23, -1, True), Column("v", 25, -1, False))
    assert [c.new for c in changes(messages)] == [("1", "a"), ("2", "b"), ("3", "c")]


def test_update_and_delete_under_default_identity(postgres, pg_database) -> None:
    messages = capture(
        postgres, pg_database,
        ["UPDATE t SET v = 'b' WHERE id = 1", "UPDATE t SET id = 10 WHERE id = 2",
         "DELETE FROM t WHERE id = 10"],
        setup=[
            "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (1, 'a'), (2, 'x')",
        ],
    )
    assert changes(messages) == [
        Update(rel := changes(messages)[0].relid, None, None, ("1", "b")),
        Update(rel, "K", ("2", None), ("10", "x")),
        Delete(rel, "K", ("10", None)),
    ]


def test_replica_identity_full_and_using_index(postgres, pg_database) -> None:
    messages = capture(
        postgres, pg_database,
        ["UPDATE f SET v = 'b'", "DELETE FROM f", "UPDATE ix SET code = 'k2', v = 'y'",
         "UPDATE ix SET v = 'z'", "DELETE FROM ix"],
        setup=[
            "CREATE TABLE f (id int PRIMARY KEY, v text)", "ALTER TABLE f REPLICA IDENTITY FULL",
            "INSERT INTO f VALUES (1, 'a')",
            "CREATE TABLE ix (id int PRIMARY KEY, code text NOT NULL, v text)",
            "CREATE UNIQUE INDEX ix_code ON ix (code)",
            "ALTER TABLE ix REPLICA IDENTITY USING INDEX ix_code",
            "INSERT INTO ix VALUES (1, 'k1', 'x')",
        ],
    )
    by_name = {r.name: r for r in relations(messages).values()}
    assert by_name["f"].replica_identity == "f"
    assert [c.is_key for c in by_name["f"].columns] == [True, True]
    assert by_name["ix"].replica_identity == "i"
    assert [c.is_key for c in by_name["ix"].columns] == [False, True, False]
    f, ix = by_name["f"].relid, by_name["ix"].relid
    assert changes(messages) == [
        Update(f, "O", ("1", "a"), ("1", "b")),
        Delete(f, "O", ("1", "b")),
        Update(ix, "K", (None, "k1", None), ("1", "k2", "y")),
        Update(ix, None, None, ("1", "k2", "z")),
        Delete(ix, "K", (None, "k2", None)),
    ]
    decoder = RowDecoder(by_name["ix"])
    assert decoder.decode_key((None, "k1", None)) == {"code": "k1"}


def test_unchanged_toast_is_not_sent(postgres, pg_database) -> None:
    big = "x" * 5000 + "é"
    messages = capture(
        postgres, pg_database,
        ["UPDATE d SET n = 2", "UPDATE f SET n = 2"],
        setup=[
            "CREATE TABLE d (id int PRIMARY KEY, n int, doc text)",
            "ALTER TABLE d ALTER COLUMN doc SET STORAGE EXTERNAL",
            f"INSERT INTO d VALUES (1, 1, '{big}')",
            "CREATE TABLE f (id int PRIMARY KEY, n int, doc text)",
            "ALTER TABLE f ALTER COLUMN doc SET STORAGE EXTERNAL",
            "ALTER TABLE f REPLICA IDENTITY FULL",
            f"INSERT INTO f VALUES (1, 1, '{big}')",
        ],
    )
    by_name = {r.name: r for r in relations(messages).values()}
    default_update, full_update = changes(messages)
    assert default_update.old_kind is None
    assert default_update.new == ("1", "2", UNCHANGED_TOAST)
    # FULL: the old row is complete (TOAST inlined), the new one still says "unchanged"
    assert full_update.old == ("1", "1", big)
    assert full_update.new == ("1", "2", UNCHANGED_TOAST)
    row, unchanged = RowDecoder(by_name["d"]).decode(default_update.new)
    assert row == {"id": 1, "n": 2} and unchanged == ["doc"]


def test_truncate_flags(postgres, pg_database) -> None:
    messages = capture(
        postgres, pg_database,
        ["TRUNCATE c", "TRUNCATE a, b RESTART IDENTITY", "TRUNCATE a CASCADE"],
        setup=[
            "CREATE TABLE a (id serial PRIMARY KEY)",
            "CREATE TABLE b (id serial PRIMARY KEY, a_id int REFERENCES a)",
            "CREATE TABLE c (id serial PRIMARY KEY)",
        ],
    )
    by_name = {r.name: r.relid for r in relations(messages).values()}
    a, b = by_name["a"], by_name["b"]
    truncates = changes(messages)
    assert truncates[0] == Truncate((by_name["c"],), False, False)
    assert set(truncates[1].relids) == {a, b}
    assert (truncates[1].cascade, truncates[1].restart_identity) == (False, True)
    assert set(truncates[2].relids) == {a, b}
    assert (truncates[2].cascade, truncates[2].restart_identity) == (True, False)


def test_logical_messages(postgres, pg_database) -> None:
    messages = capture(
        postgres, pg_database,
        ["SELECT pg_logical_emit_message(true, 'savegress.heartbeat', '{\"id\": 1}')",
         "SELECT pg_logical_emit_message(false, 'other', '\\x00ff'::bytea)",
         "SELECT pg_logical_emit_message(true, 'savegress.heartbeat', 'ü')"],
        commits=2,
    )
    emitted = changes(messages)
    assert [(m.transactional, m.prefix, m.content) for m in emitted] == [
        (True, "savegress.heartbeat", b'{"id": 1}'),
        (False, "other", b"\x00\xff"),
        (True, "savegress.heartbeat", "ü".encode()),
    ]
    # a non-transactional message arrives alone, outside any Begin/Commit
    index = messages.index(emitted[1])
    assert isinstance(messages[index - 1], Commit) and isinstance(messages[index + 1], Begin)
    assert all(m.lsn > 0 for m in emitted)
