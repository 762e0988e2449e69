"""Schema change detection between Relation messages, and what PostgreSQL errors are told as."""

from __future__ import annotations

import psycopg2

from savegress_gw.postgres.events import ChangeBuilder, diff_relation
from savegress_gw.postgres.pgoutput import Column, Relation
from savegress_gw.postgres.slots import explain


def rel(*columns: tuple[str, int], name: str = "t", identity: str = "d") -> Relation:
    return Relation(16384, "public", name, identity,
                    tuple(Column(n, oid, -1, i == 0) for i, (n, oid) in enumerate(columns)))


def kinds(old: Relation, new: Relation) -> list[tuple[str, bool]]:
    return [(c.kind, c.breaking) for c in diff_relation(old, new)]


def test_an_equal_relation_message_is_no_change() -> None:
    assert diff_relation(rel(("id", 23), ("a", 25)), rel(("id", 23), ("a", 25))) == []


def test_added_columns_are_compatible_and_the_rest_breaking() -> None:
    base = rel(("id", 23), ("a", 25), ("b", 23))
    assert kinds(base, rel(("id", 23), ("a", 25), ("b", 23), ("c", 25))) == [("add_column", False)]
    assert kinds(base, rel(("id", 23), ("a", 25))) == [("drop_column", True)]
    assert kinds(base, rel(("id", 23), ("a2", 25), ("b", 23))) == [("rename_column", True)]
    assert kinds(base, rel(("id", 23), ("a", 25), ("b", 20))) == [("type_change", True)]
    assert kinds(base, rel(("id", 23), ("a", 25), ("b", 23), name="t2")) == [("rename_table", True)]
    assert kinds(base, rel(("id", 23), ("a", 25), ("b", 23), identity="f")) == [("identity_change", False)]


def test_a_dropped_and_an_added_column_of_another_type_are_not_a_rename() -> None:
    assert kinds(rel(("id", 23), ("a", 25)), rel(("id", 23), ("z", 23))) == [("drop_column", True),
                                                                           ("add_column", False)]


def test_the_schema_cache_is_plain_data_that_restores_detection() -> None:
    builder = ChangeBuilder("db", "slot")
    builder.relation(rel(("id", 23), ("a", 25)))
    restored = ChangeBuilder("db", "slot", schemas=builder.schemas())
    assert [c.kind for c in restored.changes(rel(("id", 23)))] == ["drop_column"]
    assert restored.changes(rel(("id", 23), ("a", 25))) == []


def explained(text: str) -> str | None:
    found = explain(psycopg2.OperationalError(text), user="cdc", where="db:5432/app", slot="s", publication="p")
    return str(found) if found is not None else None


def test_configuration_errors_say_how_to_fix_them() -> None:
    assert "ALTER SYSTEM SET wal_level = logical" in explained("ERROR:  logical decoding requires wal_level >= logical")
    assert "ALTER ROLE cdc WITH REPLICATION" in explained(
        "FATAL:  must be superuser or replication role to start walsender")
    assert "source.password" in explained('FATAL:  password authentication failed for user "cdc"')
    assert "pg_hba.conf" in explained("FATAL:  no pg_hba.conf entry for host \"1.2.3.4\", user \"cdc\"")
    assert "create it before the slot" in explained('ERROR:  publication "p" does not exist')


def test_connection_losses_are_not_fatal() -> None:
    assert explained("server closed the connection unexpectedly") is None
    assert explained("FATAL:  the database system is starting up") is None
    assert explained("error with status PGRES_COPY_BOTH and no message from the libpq") is None
    assert explained("no COPY in progress") is None
    assert explained("FATAL:  terminating connection due to administrator command") is None
