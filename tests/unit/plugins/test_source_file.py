"""The ``file`` source: replay, byte-offset positions and seek, malformed lines, follow mode."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from savegress_gw.envelope import normalize
from savegress_gw.testing import build
from savegress_gw_plugins.sources import file as file_module
from savegress_gw_plugins.sources.file import FileSource


def event(i: int) -> dict[str, Any]:
    return {"id": f"evt-{i}", "operation": "insert", "schema": "public", "table": "users",
            "timestamp": "2025-01-15T10:30:00.000000Z", "after": {"id": i}}


def line(i: int) -> bytes:
    return orjson.dumps(event(i)) + b"\n"


def source(path: Path, follow: bool = False) -> FileSource:
    built, _ = build("source", {"source": {"type": "file", "path": str(path), "follow": follow}}, file_module)
    assert isinstance(built, FileSource)
    return built


def drain(target: FileSource, chunk: int = 100) -> tuple[list[dict[str, Any]], list[Any]]:
    events, positions = [], []
    while not target.exhausted:
        batch = target.read(chunk, 0.1)
        if batch is not None:
            events += batch.events
            positions.append(batch.position)
    return events, positions


def test_replays_every_line_normalized_with_byte_offsets(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line(i) for i in range(5)))
    target = source(path)
    events, positions = drain(target, chunk=2)
    assert events == [normalize(event(i), "file") for i in range(5)]
    assert events[0]["operation"] == "INSERT" and events[0]["source"] == "file"
    assert positions == [len(line(0)) * 2, len(line(0)) * 4, path.stat().st_size]
    assert target.read(10, 0.1) is None
    assert target.rejected == []
    target.close()
    target.close()


def test_a_last_line_without_newline_still_counts(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(0) + b"\n   \n" + line(1).rstrip(b"\n"))
    events, positions = drain(source(path))
    assert [e["id"] for e in events] == ["evt-0", "evt-1"]
    assert positions == [path.stat().st_size]


def test_seek_continues_from_a_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line(i) for i in range(6)) + b"{broken\n")
    first = source(path)
    batch = first.read(4, 0.1)
    assert batch is not None
    resumed = source(path)
    resumed.seek(batch.position)
    events, _ = drain(resumed)
    assert [e["id"] for e in events] == ["evt-4", "evt-5"]
    assert [r[:2] for r in resumed.rejected] == [(7, 6 * len(line(0)))]  # line numbers survive the seek


@pytest.mark.parametrize("offset, message", [(5, "start of a line"), (10_000, "within the file"), ("3", "within")])
def test_seek_refuses_an_offset_that_is_not_a_line_start(tmp_path: Path, offset: Any, message: str) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(0) + line(1))
    with pytest.raises(ValueError, match=message):
        source(path).seek(offset)


def test_malformed_lines_are_skipped_recorded_and_logged(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    bad = [
        b"{not json\n",
        b"[1, 2]\n",
        orjson.dumps({**event(9), "colour": "red"}) + b"\n",
        orjson.dumps({**event(9), "operation": "MERGE"}) + b"\n",
        orjson.dumps({**event(9), "timestamp": 12}) + b"\n",
    ]
    lines = [line(0), *bad, line(1)]
    path.write_bytes(b"".join(lines))
    target = source(path)
    with capture_logs() as logs:
        events, _ = drain(target)
    assert [e["id"] for e in events] == ["evt-0", "evt-1"]
    offsets = [sum(map(len, lines[:i])) for i in range(len(lines))]
    assert [(number, offset) for number, offset, _ in target.rejected] == [(i + 1, offsets[i]) for i in range(1, 6)]
    reasons = [reason for _, _, reason in target.rejected]
    assert reasons[0].startswith("JSONDecodeError") and "colour" in reasons[2] and "MERGE" in reasons[3]
    logged = [(log["log_level"], log["file"], log["line"]) for log in logs]
    assert logged == [("error", str(path), n) for n in range(2, 7)]


def test_a_read_of_only_malformed_lines_still_moves_the_position(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(0) + b"oops\n")
    target = source(path)
    first = target.read(1, 0.1)
    assert first is not None and [e["id"] for e in first.events] == ["evt-0"]
    skipped = target.read(1, 0.1)
    assert skipped is not None and (skipped.events, skipped.position) == ([], path.stat().st_size)
    assert target.exhausted


def test_follow_waits_for_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(0))
    target = source(path, follow=True)
    assert [e["id"] for e in target.read(10, 0.1).events] == ["evt-0"]  # type: ignore[union-attr]
    started = time.monotonic()
    assert target.read(10, 0.1) is None
    assert 0.08 <= time.monotonic() - started < 1.0
    assert not target.exhausted
    with path.open("ab") as out:
        out.write(line(1)[:20])
        out.flush()
        assert target.read(10, 0.05) is None  # half a line is left for later
        out.write(line(1)[20:] + line(2))
    batch = target.read(10, 0.1)
    assert batch is not None and [e["id"] for e in batch.events] == ["evt-1", "evt-2"]
    assert batch.position == path.stat().st_size
    assert not target.exhausted


def test_missing_file_fails_on_open(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        source(tmp_path / "absent.jsonl")
