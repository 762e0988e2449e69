"""Session settings shared by every PostgreSQL connection of the source.

The walsender formats replicated values with the replication connection's settings and the
snapshot reader's SELECTs with its own; both must use ``session_options()`` so that one value has
one text form (and therefore one JSON value, see ``types``), whichever path it arrives by.
"""

from __future__ import annotations

SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO",
    "TimeZone": "UTC",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}
CLIENT_ENCODING = "UTF8"


def session_options(extra: dict[str, str] | None = None) -> str:
    """The libpq ``options`` value: ``-c DateStyle=ISO -c TimeZone=UTC …`` plus ``extra``."""
    settings = {**SESSION_SETTINGS, **(extra or {})}
    return " ".join(f"-c {key}={value}" for key, value in settings.items())


def connect_kwargs(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Keyword arguments for ``psycopg2.connect(dsn, **connect_kwargs())``: the session options
    and ``client_encoding``, added to (and overriding) whatever the DSN says."""
    return {"options": session_options(extra), "client_encoding": CLIENT_ENCODING}
