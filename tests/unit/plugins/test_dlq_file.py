"""The ``file`` dead-letter queue: record format, fsync per put, rotation, crash repair, corruption,
retention and max_messages eviction, compression, concurrent writers, and the reader API."""

from __future__ import annotations

import os
import re
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack
import multiprocess as mp
import orjson
import pytest
from structlog.testing import capture_logs

from savegress_gw import Batch
from savegress_gw.deadletter import HEADER, MAGIC, DeadLetterStore, error_class, parse_entry_id
from savegress_gw.envelope import encode
from savegress_gw.testing import make_context, registry_of
from savegress_gw_plugins.compressors.lz4 import Lz4Compressor
from savegress_gw_plugins.dlq import file as file_module
from savegress_gw_plugins.dlq.file import FileDeadLetterQueue

DAY_NS = 86_400 * 10**9
REASON = "KafkaException: MSG_SIZE_TOO_LARGE: Broker: Message size too large"


def events(first: int, count: int, table: str = "users") -> Batch:
    """``count`` events with ids ``evt-<first>..``."""
    return encode([
        {"id": f"evt-{i}", "source": "test", "schema": "public", "table": table, "operation": "UPDATE",
         "timestamp": "2025-01-15T10:30:00.123456Z", "after": {"id": i, "name": "x" * 40}}
        for i in range(first, first + count)
    ], time.time_ns())


def open_queue(directory: Path, compressor: Lz4Compressor | None = None, **config: Any) -> FileDeadLetterQueue:
    queue = FileDeadLetterQueue(FileDeadLetterQueue.Config(base_dir=str(directory), **config))
    queue.open(make_context(compressor=compressor))
    return queue


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("dlq-*.seg"))


def event_ids(directory: Path) -> list[str]:
    return [e.event_id for e in DeadLetterStore(directory).entries()]


class FakeClock:
    """Stands in for ``time.time_ns`` so tests move days in an instant."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = time.time_ns()
        monkeypatch.setattr(time, "time_ns", lambda: self.now)

    def advance(self, ns: int) -> None:
        self.now += ns


def test_registers_the_file_dead_letter_queue() -> None:
    assert registry_of(file_module).get("dlq", "file") is FileDeadLetterQueue


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    batch = events(0, 3)
    queue = open_queue(tmp_path)
    before = time.time()
    queue.put(batch, REASON, 5, "savegress-gw/worker-1")
    after = time.time()
    queue.close()

    entries = list(DeadLetterStore(tmp_path).entries())
    assert [e.id for e in entries][0] == "dlq-00000001:0"
    assert all(re.fullmatch(r"dlq-00000001:\d+", e.id) for e in entries)
    for i, entry in enumerate(entries):
        assert entry.event_id == batch.ids[i]
        assert entry.key == batch.keys[i] == f"users:{i}"
        assert (entry.schema, entry.table, entry.operation) == ("public", "users", "UPDATE")
        assert entry.payload == batch.payloads[i]
        assert entry.encoding == "identity"
        assert (entry.reason, entry.error_class, entry.attempts) == (REASON, "KafkaException", 5)
        assert entry.origin == "savegress-gw/worker-1"
        assert entry.timestamp_ms == batch.timestamps_ms[i]
        assert entry.first_failed_at == entry.last_failed_at
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry.last_failed_at)
        assert before - 0.001 <= entry.parked_ms / 1000 <= after + 0.001
        assert DeadLetterStore(tmp_path).get(entry.id) == entry
        assert entry.to_dict()["event"] == orjson.loads(batch.payloads[i])


def test_record_format_is_magic_length_crc_body(tmp_path: Path) -> None:
    queue = open_queue(tmp_path)
    queue.put(events(0, 1), "boom", 1, "")
    queue.close()
    data = (tmp_path / "dlq-00000001.seg").read_bytes()
    magic, length, crc = HEADER.unpack(data[:HEADER.size])
    assert data[:4] == b"SGDQ" and magic == MAGIC
    assert len(data) == HEADER.size + length
    body = data[HEADER.size:]
    assert zlib.crc32(body) == crc
    assert set(msgpack.unpackb(body)) == {
        "id", "key", "table", "schema", "operation", "payload", "encoding", "reason", "error_class", "attempts",
        "first_failed_at", "last_failed_at", "origin", "timestamp_ms"}


@pytest.mark.parametrize(("reason", "expected"), [
    ("KafkaException: broker down", "KafkaException"),
    ("ConnectionRefusedError: [Errno 111]", "ConnectionRefusedError"),
    ("requests.exceptions.ReadTimeout: read timed out", "requests.exceptions.ReadTimeout"),
    ("MSG_SIZE_TOO_LARGE: Broker: Message size too large (3 events)", "MSG_SIZE_TOO_LARGE"),
    ("_MSG_TIMED_OUT: Local: Message timed out", "_MSG_TIMED_OUT"),
    ("HTTP 400: bad request", "HTTP 400"),
    ("503: unavailable", "503"),
    ("./data/events.jsonl: [Errno 28] No space left on device", ""),
    ("stdout: broken pipe", ""),
    ("kafka producer failed fatally (restart the worker): x", ""),
    ("no colon here", ""),
])
def test_error_class(reason: str, expected: str) -> None:
    assert error_class(reason) == expected


def test_every_put_is_fsynced_before_it_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = open_queue(tmp_path)
    queue.put(events(0, 2), "boom", 1, "")  # creates the segment: file + directory fsync
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    for n in range(1, 6):
        queue.put(events(10 * n, 3), "boom", 1, "")
        assert len(calls) == n  # exactly one fsync per put into an existing segment
    queue.close()


def test_a_put_that_fails_raises_and_leaves_no_partial_record(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    queue = open_queue(tmp_path)
    queue.put(events(0, 2), "boom", 1, "")
    size = (tmp_path / "dlq-00000001.seg").stat().st_size

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", failing)
        with pytest.raises(OSError):
            queue.put(events(2, 2), "boom", 1, "")
    assert (tmp_path / "dlq-00000001.seg").stat().st_size == size
    queue.put(events(4, 2), "boom", 1, "")  # works again afterwards
    queue.close()
    assert event_ids(tmp_path) == ["evt-0", "evt-1", "evt-4", "evt-5"]


def test_rotation_at_segment_size(tmp_path: Path) -> None:
    queue = open_queue(tmp_path, segment_size=2000)
    for n in range(10):
        queue.put(events(3 * n, 3), "boom", 1, "")  # about 1300 bytes per put
    queue.put(events(100, 10), "boom", 1, "")  # larger than a segment: goes in whole, alone
    queue.close()
    names = segments(tmp_path)
    assert names == [f"dlq-{n:08d}.seg" for n in range(1, 12)]
    sizes = [(tmp_path / name).stat().st_size for name in names]
    assert all(size <= 2000 for size in sizes[:-1]) and sizes[-1] > 2000
    assert event_ids(tmp_path) == [f"evt-{i}" for i in range(30)] + [f"evt-{i}" for i in range(100, 110)]


def test_torn_tail_is_cut_with_a_warning_and_earlier_records_survive(tmp_path: Path) -> None:
    queue = open_queue(tmp_path)
    queue.put(events(0, 3), "boom", 1, "")
    queue.put(events(3, 3), "boom", 1, "")
    queue.close()
    segment = tmp_path / "dlq-00000001.seg"
    whole = segment.stat().st_size
    with open(segment, "r+b") as file:  # a crash in the middle of writing the last record
        file.truncate(whole - 7)

    assert event_ids(tmp_path) == [f"evt-{i}" for i in range(5)]  # readers skip it, without repairing
    with capture_logs() as logs:
        queue = open_queue(tmp_path)
    warnings = [log for log in logs if log["log_level"] == "warning"]
    assert len(warnings) == 1 and "incomplete record" in warnings[0]["event"]
    assert warnings[0]["file"] == str(segment)
    assert segment.stat().st_size == warnings[0]["offset"] < whole - 7
    queue.put(events(6, 2), "boom", 1, "")
    queue.close()
    assert event_ids(tmp_path) == [f"evt-{i}" for i in range(5)] + ["evt-6", "evt-7"]
    assert queue.corrupt == 0


def test_corrupt_middle_record_is_skipped_logged_and_counted(tmp_path: Path) -> None:
    queue = open_queue(tmp_path)
    queue.put(events(0, 5), "boom", 1, "")
    queue.close()
    ids = [e.id for e in DeadLetterStore(tmp_path).entries()]
    _, offset = parse_entry_id(ids[2])
    segment = tmp_path / "dlq-00000001.seg"
    data = bytearray(segment.read_bytes())
    data[offset + HEADER.size + 20] ^= 0xFF  # a flipped bit in the body of the third record
    segment.write_bytes(bytes(data))

    with capture_logs() as logs:
        queue = open_queue(tmp_path)
    errors = [log for log in logs if log["log_level"] == "error"]
    assert [(e["file"], e["offset"]) for e in errors] == [(str(segment), offset)]
    assert queue.corrupt == 1
    queue.put(events(5, 1), "boom", 1, "")
    queue.close()

    store = DeadLetterStore(tmp_path)
    with capture_logs() as logs:
        assert [e.event_id for e in store.entries()] == ["evt-0", "evt-1", "evt-3", "evt-4", "evt-5"]
    assert store.corrupt == 1 and [log["offset"] for log in logs] == [offset]
    with pytest.raises(KeyError):
        store.get(ids[2])


def test_garbage_in_a_header_resynchronizes_on_the_next_record(tmp_path: Path) -> None:
    queue = open_queue(tmp_path)
    queue.put(events(0, 4), "boom", 1, "")
    queue.close()
    _, offset = parse_entry_id([e.id for e in DeadLetterStore(tmp_path).entries()][1])
    segment = tmp_path / "dlq-00000001.seg"
    data = bytearray(segment.read_bytes())
    data[offset:offset + HEADER.size] = b"\xff" * HEADER.size  # magic and length destroyed
    segment.write_bytes(bytes(data))
    queue = open_queue(tmp_path)
    queue.close()
    assert queue.corrupt == 1
    assert event_ids(tmp_path) == ["evt-0", "evt-2", "evt-3"]


def test_open_never_raises_on_a_segment_of_garbage(tmp_path: Path) -> None:
    (tmp_path / "dlq-00000001.seg").write_bytes(os.urandom(5000))
    with capture_logs():
        queue = open_queue(tmp_path)
    queue.put(events(0, 2), "boom", 1, "")
    queue.close()
    assert event_ids(tmp_path) == ["evt-0", "evt-1"]


@pytest.mark.parametrize("segment_size", [1500, 1 << 30], ids=["whole-segments", "record-by-record"])
def test_retention_evicts_entries_older_than_retention_days(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            segment_size: int) -> None:
    clock = FakeClock(monkeypatch)
    queue = open_queue(tmp_path, retention_days=1, segment_size=segment_size)
    queue.put(events(0, 3), "boom", 1, "")
    clock.advance(DAY_NS // 2)
    queue.put(events(3, 3), "boom", 1, "")
    clock.advance(DAY_NS // 2 + 10**9)  # the first put is now a day and a second old
    queue.put(events(6, 3), "boom", 1, "")
    assert queue.evicted == 3
    assert event_ids(tmp_path) == [f"evt-{i}" for i in range(3, 9)]
    if segment_size == 1500:
        assert "dlq-00000001.seg" not in segments(tmp_path)
    queue.close()

    clock.advance(DAY_NS + 10**9)  # on open too: everything is old now but the newest segment stays
    queue = open_queue(tmp_path, retention_days=1, segment_size=segment_size)
    queue.close()
    assert queue.evicted == 6 and event_ids(tmp_path) == []
    assert segments(tmp_path)


@pytest.mark.parametrize("segment_size", [1500, 1 << 30], ids=["whole-segments", "record-by-record"])
def test_max_messages_evicts_the_oldest_and_counts_them(tmp_path: Path, segment_size: int) -> None:
    queue = open_queue(tmp_path, max_messages=25, segment_size=segment_size)
    for n in range(4):
        queue.put(events(10 * n, 10), "boom", 1, "")
    assert queue.evicted == 15
    queue.close()
    assert event_ids(tmp_path) == [f"evt-{i}" for i in range(15, 40)]
    queue = open_queue(tmp_path, max_messages=25, segment_size=segment_size)  # evictions are durable
    queue.put(events(40, 1), "boom", 1, "")
    queue.close()
    assert queue.evicted == 1
    assert event_ids(tmp_path) == [f"evt-{i}" for i in range(16, 41)]


def test_compression_round_trip(tmp_path: Path) -> None:
    compressor = Lz4Compressor(Lz4Compressor.Config())
    compressor.open(make_context())
    batch = events(0, 3)
    queue = open_queue(tmp_path / "on", compressor)
    queue.put(batch, "boom", 1, "")
    queue.close()
    off = open_queue(tmp_path / "off", compressor, compression=False)
    off.put(batch, "boom", 1, "")
    off.close()

    compressed = list(DeadLetterStore(tmp_path / "on").entries())
    assert [e.encoding for e in compressed] == ["lz4"] * 3
    assert [e.payload for e in compressed] == batch.payloads
    assert all(e.stored != e.payload for e in compressed)
    plain = list(DeadLetterStore(tmp_path / "off").entries())
    assert [(e.encoding, e.payload) for e in plain] == [("identity", p) for p in batch.payloads]


def _put_from_child(directory: str, worker: int, puts: int, per_put: int, ready: Any, start: Any) -> None:
    """Child process: open a queue, then once ``start`` is set park ``puts`` batches with ids
    ``w<worker>-<n>``, as a worker would."""
    queue = FileDeadLetterQueue(FileDeadLetterQueue.Config(base_dir=directory, segment_size=16 * 1024))
    queue.open(make_context(process=f"worker-{worker}", worker_index=worker))
    ready.put(worker)
    start.wait()
    for n in range(puts):
        batch = events(n * per_put, per_put)
        batch.ids[:] = [f"w{worker}-{n * per_put + i}" for i in range(per_put)]
        queue.put(batch, "boom", 1, f"gw/worker-{worker}")
    queue.close()


def test_concurrent_puts_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, start = ctx.Queue(), ctx.Event()
    puts, per_put = 100, 5
    children = [ctx.Process(target=_put_from_child, args=(str(tmp_path), w, puts, per_put, ready, start))
                for w in range(2)]
    for child in children:
        child.start()
    try:
        for _ in children:
            ready.get(timeout=60)
        start.set()
    finally:
        for child in children:
            child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0]

    store = DeadLetterStore(tmp_path)
    entries = list(store.entries())
    assert store.corrupt == 0 and len(segments(tmp_path)) > 10
    origins = [e.origin for e in entries]
    assert sum(a != b for a, b in zip(origins, origins[1:])) > 1, "the puts never interleaved"
    for worker in range(2):
        mine = [e.event_id for e in entries if e.origin == f"gw/worker-{worker}"]
        assert mine == [f"w{worker}-{i}" for i in range(puts * per_put)]  # all there, in order
    assert len(entries) == 2 * puts * per_put


def test_remove_is_durable_and_deletes_emptied_segments(tmp_path: Path) -> None:
    queue = open_queue(tmp_path, segment_size=1500)
    for n in range(3):
        queue.put(events(3 * n, 3), "boom", 1, "")
    queue.close()
    store = DeadLetterStore(tmp_path)
    ids = [e.id for e in store.entries()]
    assert store.remove(ids[:4]) == 4  # all of segment 1, one of segment 2
    assert store.remove(ids[:4]) == 0
    assert segments(tmp_path) == ["dlq-00000002.seg", "dlq-00000003.seg"]
    assert store.count() == 5
    with pytest.raises(KeyError):
        store.get(ids[3])

    restarted = DeadLetterStore(tmp_path)
    assert [e.id for e in restarted.entries()] == ids[4:]
    assert restarted.remove(ids[4:]) == 5  # the newest segment stays, even empty
    assert segments(tmp_path) == ["dlq-00000003.seg"]
    queue = open_queue(tmp_path, segment_size=1500)
    queue.put(events(100, 1), "boom", 1, "")
    queue.close()
    assert [e.id for e in DeadLetterStore(tmp_path).entries()][0].startswith("dlq-00000004:")


def test_entries_with_ids_reads_those_in_parking_order(tmp_path: Path) -> None:
    queue = open_queue(tmp_path)
    queue.put(events(0, 4), "boom", 1, "")
    queue.close()
    store = DeadLetterStore(tmp_path)
    ids = [e.id for e in store.entries()]
    store.remove([ids[1]])
    with capture_logs() as logs:
        picked = [e.event_id for e in store.entries([ids[3], ids[0], ids[1], "dlq-00000009:0"])]
    assert picked == ["evt-0", "evt-3"]
    assert len(logs) == 2
    with pytest.raises(ValueError, match="not a dead-letter entry id"):
        store.entries(["nonsense"])


def test_purge_removes_entries_older_than_a_duration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)
    queue = open_queue(tmp_path)
    queue.put(events(0, 2), "boom", 1, "")
    clock.advance(8 * DAY_NS)
    queue.put(events(2, 2), "boom", 1, "")
    queue.close()
    assert DeadLetterStore(tmp_path).purge(7 * 86_400) == 2
    assert event_ids(tmp_path) == ["evt-2", "evt-3"]


def test_a_missing_directory_reads_as_empty(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "nowhere")
    assert list(store.entries()) == [] and store.count() == 0 and store.remove(["dlq-00000001:0"]) == 0
