"""Staged frames: FIFO without priorities, weighted round robin 4 : 2 : 1 with them."""

from __future__ import annotations

from savegress_gw.filters import priority_classes
from savegress_gw.staging import HIGH, MEDIUM, NORMAL, Staged


def test_a_single_class_is_a_fifo() -> None:
    staged: Staged[int] = Staged()
    for i in range(5):
        staged.append(i)
    assert [staged.pop() for _ in range(5)] == list(range(5)) and not staged


def test_classes_are_served_4_2_1_and_nothing_starves() -> None:
    staged: Staged[str] = Staged()
    for i in range(20):
        staged.append(f"h{i}", HIGH)
        staged.append(f"m{i}", MEDIUM)
        staged.append(f"n{i}", NORMAL)
    first = [staged.pop() for _ in range(14)]
    assert first == ["h0", "h1", "h2", "h3", "m0", "m1", "n0", "h4", "h5", "h6", "h7", "m2", "m3", "n1"]
    assert staged.peek() == "h8"
    rest = [staged.pop() for _ in range(46)]
    assert [x for x in first + rest if x[0] == "n"] == [f"n{i}" for i in range(20)], "FIFO within a class"


def test_an_empty_class_gives_its_turn_away() -> None:
    staged: Staged[str] = Staged()
    for i in range(3):
        staged.append(f"n{i}", NORMAL)
    staged.append("m0", MEDIUM)
    assert [staged.pop() for _ in range(4)] == ["m0", "n0", "n1", "n2"]


def test_overflow_drops_the_least_important_first() -> None:
    staged: Staged[str] = Staged()
    staged.append("h0", HIGH)
    staged.append("n0", NORMAL)
    staged.append("n1", NORMAL)
    assert staged.pop_least_important() == "n0"


def test_priority_classes_from_table_patterns() -> None:
    classify = priority_classes(["orders", "public.pay*"], ["*.users"])
    assert classify("sales", "orders") == HIGH and classify("public", "payments") == HIGH
    assert classify("crm", "users") == MEDIUM and classify("public", "logs") == NORMAL
