"""Table and column filters of the source section."""

from __future__ import annotations

import pytest

from savegress_gw.filters import TableFilter, keep_column


def event(schema: str, table: str, **rows) -> dict:
    return {"schema": schema, "table": table, "operation": "UPDATE", **rows}


def passing(f: TableFilter, *pairs: tuple[str, str]) -> list[tuple[str, str]]:
    kept = f.apply([event(s, t) for s, t in pairs])
    return [(e["schema"], e["table"]) for e in kept]


ALL = [("public", "users"), ("public", "orders"), ("public", "sessions"), ("inventory", "items"),
       ("sales", "audit_log"), ("public", "audit_trail"), ("crm", "users")]


def test_no_filter_passes_everything_untouched() -> None:
    f = TableFilter([], [], {})
    assert not f.active
    events = [event("public", "users", after={"id": 1, "secret": "x"})]
    assert f.apply(events) is events


def test_reference_example() -> None:
    f = TableFilter(["public.users", "public.orders", "inventory.*"],
                    ["public.sessions", "public.logs", "*.audit_*"], {})
    assert passing(f, *ALL) == [("public", "users"), ("public", "orders"), ("inventory", "items")]


def test_exclude_only_passes_the_rest() -> None:
    f = TableFilter([], ["*.audit_*", "public.sessions"], {})
    assert passing(f, *ALL) == [("public", "users"), ("public", "orders"), ("inventory", "items"), ("crm", "users")]


def test_exclude_wins_over_include() -> None:
    f = TableFilter(["public.*"], ["public.orders"], {})
    assert passing(f, *ALL) == [("public", "users"), ("public", "sessions"), ("public", "audit_trail")]


def test_bare_names_match_in_any_schema_and_qualified_names_do_not() -> None:
    assert passing(TableFilter(["users"], [], {}), *ALL) == [("public", "users"), ("crm", "users")]
    assert passing(TableFilter(["*.users"], [], {}), *ALL) == [("public", "users"), ("crm", "users")]
    assert passing(TableFilter(["public.users"], [], {}), *ALL) == [("public", "users")]


def test_matching_is_case_sensitive_and_whole_name() -> None:
    f = TableFilter(["public.user"], [], {})
    assert passing(f, ("public", "users"), ("public", "user"), ("PUBLIC", "user")) == [("public", "user")]


def test_events_without_table_pass_table_filters() -> None:
    f = TableFilter(["public.users"], [], {})
    begin = {"operation": "BEGIN", "transaction_id": "t1"}
    assert f.apply([begin, event("public", "orders")]) == [begin]


@pytest.mark.parametrize(
    ("patterns", "kept"),
    [
        (("id", "name", "email"), {"id", "name", "email"}),
        (("*",), {"id", "name", "email", "internal_score", "internal_note"}),
        (("*", "!internal_*"), {"id", "name", "email"}),
        (("!internal_*", "*"), {"id", "name", "email"}),  # a deny wins wherever it stands
        (("*", "!email", "!internal_note"), {"id", "name", "internal_score"}),
        (("i*",), {"id", "internal_score", "internal_note"}),
        ((), set()),
    ],
)
def test_keep_column(patterns: tuple[str, ...], kept: set[str]) -> None:
    columns = ["id", "name", "email", "internal_score", "internal_note"]
    assert {c for c in columns if keep_column(c, patterns)} == kept


def test_columns_are_trimmed_in_before_and_after_without_touching_the_input() -> None:
    f = TableFilter([], [], {"public.users": ["id", "name", "email"], "orders": ["*", "!internal_*"]})
    original = event("public", "users", before={"id": 1, "password": "a"},
                     after={"id": 1, "name": "n", "email": "e", "password": "b"})
    order = event("shop", "orders", after={"id": 9, "total": 3, "internal_margin": 1}, before=None)
    other = event("public", "sessions", after={"token": "t"})
    users, orders, sessions = f.apply([original, order, other])
    assert users["before"] == {"id": 1}
    assert users["after"] == {"id": 1, "name": "n", "email": "e"}
    assert original["after"]["password"] == "b"  # the source's dict is not modified
    assert orders["after"] == {"id": 9, "total": 3} and orders["before"] is None
    assert sessions == other  # no column rule for it


def test_qualified_column_rule_beats_bare_one() -> None:
    f = TableFilter([], [], {"public.users": ["id"], "users": ["id", "name"]})
    public, crm = f.apply([event("public", "users", after={"id": 1, "name": "a"}),
                           event("crm", "users", after={"id": 2, "name": "b"})])
    assert public["after"] == {"id": 1}
    assert crm["after"] == {"id": 2, "name": "b"}
