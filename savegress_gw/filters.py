"""Table and column filters of the ``source`` section, applied in the source process.

Patterns are ``schema.table`` with ``*`` wildcards (``public.*``, ``*.audit_*``); a bare name
(``users``) matches that table in any schema. Column lists keep names or patterns, ``"*"`` keeps
all, ``"!pattern"`` drops matches.
"""

from __future__ import annotations

import fnmatch
from functools import lru_cache
from typing import Any, Callable


def _matches(pattern: str, schema: str, table: str) -> bool:
    if "." in pattern:
        return fnmatch.fnmatchcase(f"{schema}.{table}", pattern)
    return fnmatch.fnmatchcase(table, pattern)


class TableFilter:
    """Decides which events pass (``tables`` include list, ``exclude_tables`` wins) and trims columns."""

    def __init__(self, tables: list[str], exclude: list[str], columns: dict[str, list[str]]) -> None:
        self.tables = tuple(tables)
        self.exclude = tuple(exclude)
        self.columns = {name: tuple(patterns) for name, patterns in columns.items()}
        self.active = bool(self.tables or self.exclude or self.columns)
        self.allows = lru_cache(maxsize=4096)(self._allows)

    def _allows(self, schema: str, table: str) -> bool:
        if any(_matches(p, schema, table) for p in self.exclude):
            return False
        return not self.tables or any(_matches(p, schema, table) for p in self.tables)

    def apply(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events that pass, with their rows trimmed to the allowed columns."""
        if not self.active:
            return events
        kept = []
        for event in events:
            schema, table = event.get("schema") or "", event.get("table") or ""
            if table and not self.allows(schema, table):
                continue
            patterns = self.columns.get(f"{schema}.{table}") or self.columns.get(table)
            if patterns:
                event = dict(event)
                for side in ("before", "after"):
                    if isinstance(event.get(side), dict):
                        event[side] = {k: v for k, v in event[side].items() if keep_column(k, patterns)}
            kept.append(event)
        return kept


def keep_column(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether column ``name`` survives ``patterns`` (allow names/patterns, ``!`` denies)."""
    if any(p.startswith("!") and fnmatch.fnmatchcase(name, p[1:]) for p in patterns):
        return False
    return any(not p.startswith("!") and fnmatch.fnmatchcase(name, p) for p in patterns)


def priority_classes(high: list[str], medium: list[str]) -> Callable[[str, str], int]:
    """``(schema, table) → class`` (0 high, 1 medium, 2 normal) from ``parallel.priority`` patterns."""

    @lru_cache(maxsize=4096)
    def classify(schema: str, table: str) -> int:
        if any(_matches(p, schema, table) for p in high):
            return 0
        if any(_matches(p, schema, table) for p in medium):
            return 1
        return 2

    return classify
