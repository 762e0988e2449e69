"""The ``file`` sink: JSONL, size rotation with max_files, segment compression, ack modes, recovery."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lz4.frame
import pytest

from savegress_gw import Batch, Outcome, Status
from savegress_gw.compression import decompress
from savegress_gw.envelope import encode
from savegress_gw.testing import build_sink, send_one
from savegress_gw_plugins.compressors import lz4 as lz4_module
from savegress_gw_plugins.sinks import file as file_module
from savegress_gw_plugins.sinks.file import FileSink

MODULES = (file_module, lz4_module)
NO_COMPRESSION = {"algorithm": "lz4", "enabled": False}
LZ4 = {"algorithm": "lz4"}


def batch(first: int, count: int) -> Batch:
    """``count`` events with ids ``first..``; each line is about 200 bytes."""
    return encode([
        {"id": f"evt-{i}", "source": "test", "schema": "public", "table": "users", "operation": "INSERT",
         "timestamp": "2025-01-15T10:30:00.000000Z", "after": {"id": i, "name": "x" * 40}}
        for i in range(first, first + count)
    ], 0)


def open_sink(directory: Path, compression: dict[str, Any] = NO_COMPRESSION, ack_mode: str | None = None,
              workers: int = 1, **rotate: Any) -> FileSink:
    """Build the sink from a profile, opened with the profile's compressor as the worker does."""
    data: dict[str, Any] = {
        "output": {"type": "file", "path": str(directory / "events.jsonl"), "rotate": rotate},
        "compression": compression,
        "gateway": {"workers": workers},
    }
    if ack_mode:
        data["replication"] = {"ack_mode": ack_mode}
    sink = build_sink(data, *MODULES)
    assert isinstance(sink, FileSink)
    return sink


def files(directory: Path) -> list[str]:
    """The sink's files, without the lock file every sink keeps beside them."""
    assert (directory / ".events.jsonl.lock").exists()
    return sorted(p.name for p in directory.iterdir() if p.name != ".events.jsonl.lock")


def segment_number(path: Path) -> int:
    return int(path.name.split(".")[2])


def all_lines(directory: Path) -> list[bytes]:
    """Lines of every segment (decompressed), oldest first, then of the active file."""
    lines = []
    for segment in sorted(directory.glob("events.jsonl.*"), key=segment_number):
        encoding = "lz4" if segment.suffix == ".lz4" else "identity"
        lines += decompress(segment.read_bytes(), encoding).splitlines()
    return lines + (directory / "events.jsonl").read_bytes().splitlines()


def test_writes_one_envelope_per_line(tmp_path: Path) -> None:
    sink = open_sink(tmp_path)
    assert send_one(sink, batch(0, 3)) == Outcome(Status.DELIVERED)
    assert send_one(sink, batch(3, 2)) == Outcome(Status.DELIVERED)
    sink.close()
    sink.close()
    assert (tmp_path / "events.jsonl").read_bytes().splitlines() == batch(0, 5).payloads


def test_creates_the_directory(tmp_path: Path) -> None:
    sink = open_sink(tmp_path / "data" / "out")
    send_one(sink, batch(0, 1))
    sink.close()
    assert files(tmp_path / "data" / "out") == ["events.jsonl"]


def test_rotates_by_size_and_keeps_max_files(tmp_path: Path) -> None:
    sink = open_sink(tmp_path, max_size="1KB", max_files=3, compress=False)
    for first in range(0, 40, 2):  # 20 batches of ~400 bytes: two per segment
        send_one(sink, batch(first, 2))
    sink.close()
    segments = sorted(tmp_path.glob("events.jsonl.*"), key=segment_number)
    assert [segment_number(s) for s in segments] == [7, 8, 9]
    assert all(0 < s.stat().st_size <= 1024 for s in segments)
    assert all_lines(tmp_path) == batch(24, 16).payloads


def test_a_batch_larger_than_max_size_goes_in_whole(tmp_path: Path) -> None:
    sink = open_sink(tmp_path, max_size=500, compress=False)
    send_one(sink, batch(0, 10))
    send_one(sink, batch(10, 10))
    sink.close()
    assert files(tmp_path) == ["events.jsonl", "events.jsonl.1"]
    assert all_lines(tmp_path) == batch(0, 20).payloads


def test_no_rotation_when_disabled(tmp_path: Path) -> None:
    sink = open_sink(tmp_path, enabled=False, max_size=100)
    for first in range(0, 10, 2):
        send_one(sink, batch(first, 2))
    sink.close()
    assert files(tmp_path) == ["events.jsonl"]


def test_numbering_continues_after_reopen_and_appends(tmp_path: Path) -> None:
    sink = open_sink(tmp_path, max_size="1KB", max_files=10, compress=False)
    for first in range(0, 10, 2):
        send_one(sink, batch(first, 2))
    sink.close()
    assert files(tmp_path) == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    reopened = open_sink(tmp_path, max_size="1KB", max_files=10, compress=False)
    for first in range(10, 20, 2):
        send_one(reopened, batch(first, 2))
    reopened.close()
    assert sorted(segment_number(s) for s in tmp_path.glob("events.jsonl.*")) == [1, 2, 3, 4]
    assert all_lines(tmp_path) == batch(0, 20).payloads


def test_rotated_segments_are_compressed_and_decode_to_the_exact_lines(tmp_path: Path) -> None:
    sink = open_sink(tmp_path, compression=LZ4, max_size="2KB", max_files=10)
    for first in range(0, 80, 4):
        send_one(sink, batch(first, 4))
    sink.close()
    segments = sorted(tmp_path.glob("events.jsonl.*"), key=segment_number)
    assert segments and all(s.name.endswith(".lz4") for s in segments)
    assert [segment_number(s) for s in segments] == list(range(1, len(segments) + 1))
    assert lz4.frame.decompress(segments[0].read_bytes()).startswith(batch(0, 1).payloads[0] + b"\n")
    assert all_lines(tmp_path) == batch(0, 80).payloads


def test_segment_left_plain_when_the_compressor_answers_identity(tmp_path: Path) -> None:
    sink = open_sink(tmp_path, compression={**LZ4, "min_size": "1MB"}, max_size=500)
    send_one(sink, batch(0, 3))
    send_one(sink, batch(3, 3))
    sink.close()
    assert files(tmp_path) == ["events.jsonl", "events.jsonl.1"]


def test_recovers_what_a_crash_left_behind(tmp_path: Path) -> None:
    old = b"\n".join(batch(0, 20).payloads) + b"\n"
    (tmp_path / "events.jsonl.3").write_bytes(old)  # compressed, plain not yet removed
    (tmp_path / "events.jsonl.3.lz4").write_bytes(lz4.frame.compress(old))
    (tmp_path / "events.jsonl.4").write_bytes(old)  # crashed while compressing
    (tmp_path / "events.jsonl.4.lz4.tmp").write_bytes(b"half a frame")
    active = batch(20, 2).payloads
    (tmp_path / "events.jsonl").write_bytes(active[0] + b"\n" + active[1][:30])  # torn last write
    sink = open_sink(tmp_path, compression=LZ4, max_size="1MB")
    assert files(tmp_path) == ["events.jsonl", "events.jsonl.3.lz4", "events.jsonl.4.lz4"]
    assert decompress((tmp_path / "events.jsonl.4.lz4").read_bytes(), "lz4") == old
    assert (tmp_path / "events.jsonl").read_bytes() == active[0] + b"\n"
    send_one(sink, batch(21, 1))
    sink.close()
    assert (tmp_path / "events.jsonl").read_bytes().splitlines() == active

    rotating = open_sink(tmp_path, compression=LZ4, max_size=100)
    send_one(rotating, batch(22, 1))
    rotating.close()
    assert files(tmp_path) == ["events.jsonl", "events.jsonl.3.lz4", "events.jsonl.4.lz4", "events.jsonl.5.lz4"]


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_ack_all_fsyncs_every_batch(tmp_path: Path, fsyncs: list[int]) -> None:
    sink = open_sink(tmp_path, ack_mode="all")
    opened = len(fsyncs)  # the directory, as the active file was created
    for first in range(0, 5):
        send_one(sink, batch(first, 1))
    sink.close()
    assert (opened, len(fsyncs) - opened) == (1, 5)


def test_ack_leader_flushes_without_fsync(tmp_path: Path, fsyncs: list[int]) -> None:
    sink = open_sink(tmp_path, ack_mode="leader")
    send_one(sink, batch(0, 1))
    assert (tmp_path / "events.jsonl").read_bytes() == batch(0, 1).payloads[0] + b"\n"
    sink.close()
    assert fsyncs == []


def test_ack_none_acknowledges_from_the_python_buffer(tmp_path: Path, fsyncs: list[int]) -> None:
    sink = open_sink(tmp_path, ack_mode="none")
    assert send_one(sink, batch(0, 1)) == Outcome(Status.DELIVERED)
    assert (tmp_path / "events.jsonl").read_bytes() == b""
    sink.close()
    assert (tmp_path / "events.jsonl").read_bytes() == batch(0, 1).payloads[0] + b"\n"
    assert fsyncs == []


def test_ack_none_still_flushes_when_workers_share_the_file(tmp_path: Path) -> None:
    sink = open_sink(tmp_path, ack_mode="none", workers=2)
    send_one(sink, batch(0, 1))
    assert (tmp_path / "events.jsonl").read_bytes() == batch(0, 1).payloads[0] + b"\n"
    sink.close()


def test_a_worker_killed_mid_write_does_not_corrupt_the_next_line(tmp_path: Path) -> None:
    survivor = open_sink(tmp_path, workers=2)
    send_one(survivor, batch(0, 1))
    with (tmp_path / "events.jsonl").open("ab") as killed:  # what a SIGKILLed worker leaves
        killed.write(batch(1, 1).payloads[0][:25])
    send_one(survivor, batch(2, 1))
    survivor.close()
    assert (tmp_path / "events.jsonl").read_bytes().splitlines() == batch(0, 1).payloads + batch(2, 1).payloads


def test_workers_sharing_one_path_rotate_without_losing_a_line(tmp_path: Path) -> None:
    first, second = (open_sink(tmp_path, compression=LZ4, workers=2, max_size="2KB", max_files=100)
                     for _ in range(2))
    for start in range(0, 120, 3):  # alternate: each sink sees the other's rotations
        assert send_one(first if start % 2 else second, batch(start, 3)) == Outcome(Status.DELIVERED)
    first.close()
    second.close()
    segments = sorted(tmp_path.glob("events.jsonl.*"), key=segment_number)
    assert [segment_number(s) for s in segments] == list(range(1, len(segments) + 1))
    assert len(segments) > 5 and all(s.name.endswith(".lz4") for s in segments)
    assert all_lines(tmp_path) == batch(0, 120).payloads


def test_os_error_is_errored_and_the_next_send_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = open_sink(tmp_path, ack_mode="all")

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    outcome = send_one(sink, batch(0, 1))
    assert outcome.status is Status.ERRORED
    assert "Input/output error" in outcome.reason and "events.jsonl" in outcome.reason
    monkeypatch.undo()
    assert send_one(sink, batch(0, 1)) == Outcome(Status.DELIVERED)
    sink.close()
    # the failed write was cut off again: the retry does not leave a duplicate behind
    assert (tmp_path / "events.jsonl").read_bytes().splitlines() == batch(0, 1).payloads


def test_a_write_that_fails_midway_is_cut_off_again(tmp_path: Path) -> None:
    """A real short write: the process's file size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so
    the write fails with EFBIG) stops the batch after some of its lines reached the file."""
    import resource

    sink = open_sink(tmp_path, ack_mode="leader")
    assert send_one(sink, batch(0, 2)) == Outcome(Status.DELIVERED)
    before = (tmp_path / "events.jsonl").read_bytes()
    second = batch(2, 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + len(second.payloads[0]) * 5 + 10, hard))
    try:
        outcome = send_one(sink, second)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert outcome.status is Status.ERRORED and "File too large" in outcome.reason
    assert (tmp_path / "events.jsonl").read_bytes() == before, "no line of the failed batch stays behind"
    assert send_one(sink, second) == Outcome(Status.DELIVERED)
    sink.close()
    assert (tmp_path / "events.jsonl").read_bytes().splitlines() == batch(0, 2).payloads + second.payloads
