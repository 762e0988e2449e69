"""Helpers for tests that run the PostgreSQL source in a real gateway (file sink)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tests.harness.gateway import Gateway, wait_for
from tests.harness.verify import file_sink_events

ROW_OPERATIONS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "SNAPSHOT")


def pg_profile(postgres: Any, dbname: str, workdir: Path, *, slot: str = "gw_slot", publication: str = "gw_pub",
               source: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """A profile: ``source.type: postgres`` on ``dbname`` → a file sink under ``workdir``.

    Heartbeats are off and snapshots disabled unless the test turns them on; checkpoints and
    standby feedback run every second so restarts replay little.
    """
    profile: dict[str, Any] = {
        "gateway": {"id": "pgtest", "heartbeat_timeout": "120s"},
        "source": {"type": "postgres", "host": "127.0.0.1", "port": postgres.port, "database": dbname,
                   "user": "postgres", "slot_name": slot, "publication": publication,
                   "heartbeat_enabled": False, "standby_message_interval": "1s", **(source or {})},
        "snapshot": {"enabled": False},
        "output": {"type": "file", "path": str(workdir / "out" / "events.jsonl")},
        "checkpoint": {"dir": str(workdir / "checkpoints"), "interval": "1s"},
        "batching": {"max_size": 500, "max_wait": "20ms"},
    }
    for key, value in sections.items():
        profile[key] = {**profile.get(key, {}), **value}
    return profile


def sink_path(workdir: Path) -> Path:
    return workdir / "out" / "events.jsonl"


def events(workdir: Path, operations: tuple[str, ...] = ROW_OPERATIONS) -> list[dict[str, Any]]:
    """Events the file sink holds, of the given operations, in file order."""
    return [e for e in file_sink_events(sink_path(workdir)) if e["operation"] in operations]


def wait_events(workdir: Path, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 90,
                operations: tuple[str, ...] = ROW_OPERATIONS, what: str = "events in the sink") -> list[dict[str, Any]]:
    """Poll the sink until ``done(events)``; return those events."""
    found: list[dict[str, Any]] = []

    def check() -> bool:
        found[:] = events(workdir, operations)
        return done(found)

    wait_for(check, timeout, what, interval=0.2)
    return found


def slot_row(postgres: Any, dbname: str, slot: str) -> tuple[Any, ...] | None:
    """``(active, confirmed_flush_lsn as int)`` of ``slot`` (0 while it is being created), or None."""
    rows = postgres.execute("SELECT active, confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots"
                            " WHERE slot_name = %s", (slot,), dbname=dbname)
    return (rows[0][0], int(rows[0][1] or 0)) if rows else None


def start_streaming(postgres: Any, dbname: str, workdir: Path, profile: dict[str, Any],
                    timeout: float = 120) -> Gateway:
    """Start a gateway and wait until its slot is being streamed from."""
    gateway = Gateway(workdir, profile).start()
    slot = profile["source"]["slot_name"]

    def streaming() -> bool:
        if gateway.process is not None and gateway.process.poll() is not None:
            raise AssertionError(f"gateway exited with {gateway.process.returncode}:\n{gateway.stderr()[-3000:]}")
        row = slot_row(postgres, dbname, slot)
        return bool(row and row[0])

    wait_for(streaming, timeout, f"slot {slot} to be streamed", interval=0.2)
    return gateway


def release(postgres: Any, dbname: str, timeout: float = 60) -> None:
    """Kill what a test left running and wait until no slot of ``dbname`` is streamed from, so
    the database can be dropped."""
    from tests.harness.gateway import kill_leftovers

    kill_leftovers()
    wait_for(lambda: not postgres.execute("SELECT 1 FROM pg_replication_slots WHERE database = %s AND active",
                                          (dbname,)), timeout, f"the slots of {dbname} to be released", interval=0.2)
