"""Point-in-time recovery: the archive writer (buckets, sealing, recovery, retention), the replay
source (order, from/to, resume), the pipeline hook (archived == delivered, before the ack) and the
``pitr`` command's refusals."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
import structlog
import yaml
import zstandard

from savegress_gw.cli import main
from savegress_gw.components import Context, Status
from savegress_gw.pitr import ArchiveWriter
from savegress_gw.pitr.layout import Segment, bucket_seconds, bucket_start, format_stamp, list_segments, segment_name
from savegress_gw.pitr.reader import read_lines, select
from savegress_gw.pitr.sealing import cut_torn_tail
from savegress_gw.pitr_cli import replay_profile
from savegress_gw.plugins import collect_components, get_plugin_manager
from tests.harness.pipeline import MemorySink, errored, partly, rejected

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, a multiple of every granularity used here
LOG = structlog.get_logger()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def writer(directory: Path, clock: Clock, worker: int = 0, granularity: int = 10, segment_size: int = 1 << 20,
           retention: float = 7 * 86400) -> ArchiveWriter:
    return ArchiveWriter(directory, worker, granularity, segment_size, retention, LOG, clock=clock)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def sealed_lines(path: Path) -> list[bytes]:
    return zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read().splitlines()


def payloads(*ids: str) -> list[bytes]:
    return [orjson.dumps({"id": i, "table": "t", "operation": "INSERT", "after": {"id": i}}) for i in ids]


# ------------------------------------------------------------------ layout


def test_buckets_are_aligned_to_the_epoch_and_named_by_their_utc_start() -> None:
    assert bucket_seconds(60.0) == 60 and bucket_seconds(1.0) == 1 and bucket_seconds(1.4) == 1
    assert bucket_start(T0 + 59.999, 60) == T0 and bucket_start(T0 + 60, 60) == T0 + 60
    assert format_stamp(T0 + 90) == "20260101T000130Z"
    name = segment_name(T0 + 60, 3, 2, sealed=False)
    assert name == "20260101T000100Z-w3-2.jsonl.open"
    segment = Segment.parse(Path(name))
    assert (segment.bucket, segment.worker, segment.n, segment.sealed) == (T0 + 60, 3, 2, False)
    assert segment.with_state(True).path.name == "20260101T000100Z-w3-2.jsonl.zst"
    assert Segment.parse(Path(name + ".tmp")) is None and Segment.parse(Path("notes.txt")) is None


# ------------------------------------------------------------------ writer


def test_a_segment_is_sealed_when_its_bucket_ends_on_append(tmp_path: Path) -> None:
    clock = Clock(T0 + 1)
    archive = writer(tmp_path, clock)
    archive.append(payloads("a", "b"))
    clock.now = T0 + 9.9
    archive.append(payloads("c"))
    assert names(tmp_path) == ["20260101T000000Z-w0-0.jsonl.open"]
    assert (tmp_path / "20260101T000000Z-w0-0.jsonl.open").read_bytes() == b"\n".join(payloads("a", "b", "c")) + b"\n"
    clock.now = T0 + 10
    archive.append(payloads("d"))
    assert names(tmp_path) == ["20260101T000000Z-w0-0.jsonl.zst", "20260101T000010Z-w0-0.jsonl.open"]
    assert sealed_lines(tmp_path / "20260101T000000Z-w0-0.jsonl.zst") == payloads("a", "b", "c")
    archive.close()
    assert names(tmp_path) == ["20260101T000000Z-w0-0.jsonl.zst", "20260101T000010Z-w0-0.jsonl.zst"]
    assert sealed_lines(tmp_path / "20260101T000010Z-w0-0.jsonl.zst") == payloads("d")


def test_an_idle_tick_seals_a_segment_whose_bucket_ended(tmp_path: Path) -> None:
    clock = Clock(T0 + 3)
    archive = writer(tmp_path, clock)
    archive.append(payloads("a"))
    clock.now = T0 + 9
    archive.tick()
    assert names(tmp_path) == ["20260101T000000Z-w0-0.jsonl.open"]
    clock.now = T0 + 10
    archive.tick()
    assert names(tmp_path) == ["20260101T000000Z-w0-0.jsonl.zst"]
    archive.tick()  # nothing open: nothing happens, no empty segment
    assert names(tmp_path) == ["20260101T000000Z-w0-0.jsonl.zst"]


def test_a_segment_reaching_segment_size_is_sealed_and_the_next_one_counts_on(tmp_path: Path) -> None:
    clock = Clock(T0)
    archive = writer(tmp_path, clock, segment_size=100)
    batch = payloads("a", "b")  # ~ 2 x 60 bytes: over the size at once
    assert len(b"\n".join(batch)) + 1 >= 100
    archive.append(batch)
    assert names(tmp_path) == ["20260101T000000Z-w0-0.jsonl.zst"]
    archive.append(payloads("c"))
    archive.append(payloads("d"))
    assert names(tmp_path) == ["20260101T000000Z-w0-0.jsonl.zst", "20260101T000000Z-w0-1.jsonl.zst"]
    archive.append(payloads("e"))
    archive.close()
    assert sealed_lines(tmp_path / "20260101T000000Z-w0-1.jsonl.zst") == payloads("c", "d")
    assert sealed_lines(tmp_path / "20260101T000000Z-w0-2.jsonl.zst") == payloads("e")


def test_background_sealing_with_an_opened_writer(tmp_path: Path) -> None:
    clock = Clock(T0)
    archive = writer(tmp_path, clock)
    archive.open()
    for second in range(0, 30, 2):
        clock.now = T0 + second
        archive.append(payloads(f"e{second}"))
    archive.close()
    segments = list_segments(tmp_path)
    assert [(s.bucket - T0, s.sealed) for s in segments] == [(0, True), (10, True), (20, True)]
    lines = [line for s in segments for line in read_lines(s)]
    assert lines == payloads(*[f"e{second}" for second in range(0, 30, 2)])
    assert archive.failure is None


def test_a_torn_tail_is_cut_and_a_crashed_workers_open_segment_sealed_at_start(tmp_path: Path) -> None:
    torn = tmp_path / segment_name(T0, 0, 0, sealed=False)
    torn.write_bytes(b"\n".join(payloads("a", "b")) + b"\n" + b'{"id":"c","tab')
    other = tmp_path / segment_name(T0, 1, 0, sealed=False)  # another worker's: not ours to touch
    other.write_bytes(b"\n".join(payloads("x")) + b"\n")
    leftover_tmp = tmp_path / (segment_name(T0, 0, 0, sealed=True) + ".tmp")
    leftover_tmp.write_bytes(b"half a compression")
    clock = Clock(T0 + 5)  # restarted within the same bucket
    archive = writer(tmp_path, clock)
    archive.open()
    assert sealed_lines(tmp_path / segment_name(T0, 0, 0, sealed=True)) == payloads("a", "b")
    assert not torn.exists() and not leftover_tmp.exists() and other.exists()
    archive.append(payloads("c"))
    assert (tmp_path / segment_name(T0, 0, 1, sealed=False)).exists()  # the next n, not over the sealed one
    archive.close()
    assert sealed_lines(tmp_path / segment_name(T0, 0, 1, sealed=True)) == payloads("c")


def test_cut_torn_tail_keeps_complete_files_and_empties_a_single_torn_line(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    whole.write_bytes(b"a\nb\n")
    assert cut_torn_tail(whole) == 0 and whole.read_bytes() == b"a\nb\n"
    one = tmp_path / "one"
    one.write_bytes(b"x" * 200_000)  # longer than one backwards read
    assert cut_torn_tail(one) == 200_000 and one.read_bytes() == b""
    long = tmp_path / "long"
    long.write_bytes(b"a\n" + b"y" * 100_000)
    assert cut_torn_tail(long) == 100_000 and long.read_bytes() == b"a\n"


def test_a_crash_between_sealing_and_removing_the_open_file_keeps_the_sealed_one(tmp_path: Path) -> None:
    clock = Clock(T0)
    first = writer(tmp_path, clock)
    first.append(payloads("a"))
    open_path = tmp_path / segment_name(T0, 0, 0, sealed=False)
    copy = open_path.read_bytes()
    first.close()
    open_path.write_bytes(copy)  # as if the process died right after os.replace
    assert [s.sealed for s in list_segments(tmp_path)] == [True]
    second = writer(tmp_path, clock)
    second.open()
    second.close()
    assert names(tmp_path) == [segment_name(T0, 0, 0, sealed=True)]


def test_retention_deletes_sealed_segments_whose_bucket_ended_long_enough_ago(tmp_path: Path) -> None:
    clock = Clock(T0)
    archive = writer(tmp_path, clock, retention=100)
    for second in (0, 10, 20, 30):
        clock.now = T0 + second
        archive.append(payloads(f"e{second}"))
    archive.close()
    stale_open = tmp_path / segment_name(T0, 1, 0, sealed=False)  # open segments are never expired here
    stale_open.write_bytes(b"")
    assert len(list_segments(tmp_path)) == 5
    clock.now = T0 + 125  # buckets ending at <= T0+25 are past a 100 s retention: [0,10) and [10,20)
    later = writer(tmp_path, clock, retention=100, worker=2)
    later.open()  # at start
    assert [(s.bucket - T0, s.worker, s.sealed) for s in list_segments(tmp_path)] == \
        [(0, 1, False), (20, 0, True), (30, 0, True)]
    clock.now = T0 + 131
    later.append(payloads("z"))
    clock.now = T0 + 139
    later.close()  # on seal: [20,30) ended at T0+30 <= T0+39, [30,40) did not
    assert [(s.bucket - T0, s.worker) for s in list_segments(tmp_path)] == [(0, 1), (30, 0), (130, 2)]


# ------------------------------------------------------------------ replay source


def source(**config: object):
    registry = collect_components(get_plugin_manager())
    cls = registry.get("source", "pitr_replay")
    return cls(cls.Config(**config))


def opened(src, profile=None):
    src.open(Context(process="source", worker_index=-1, log=LOG, profile=profile))
    return src


def read_all(src, max_events: int = 1000) -> list[str]:
    out = []
    while not src.exhausted:
        batch = src.read(max_events, 0.0)
        if batch is not None:
            out.extend(e["id"] for e in batch.events)
    return out


def archive_of(root: Path) -> Path:
    """Two workers, three buckets of 10 s, worker 0 with two segments in bucket 1, the newest open."""
    directory = root / "gw"
    directory.mkdir(parents=True)

    def put(bucket: int, worker: int, n: int, ids: list[str], sealed: bool = True, torn: bytes = b"") -> None:
        data = b"\n".join(payloads(*ids)) + b"\n" + torn
        path = directory / segment_name(T0 + bucket, worker, n, sealed)
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data) if sealed else data)

    put(10, 1, 0, ["b1w1a", "b1w1b"])  # written out of order on purpose
    put(0, 1, 0, ["b0w1"])
    put(10, 0, 1, ["b1w0n1"])
    put(0, 0, 0, ["b0w0a", "b0w0b"])
    put(10, 0, 0, ["b1w0n0"])
    put(20, 0, 0, ["b2w0a", "b2w0b"], sealed=False, torn=b'{"id":"half')
    return directory


ALL = ["b0w0a", "b0w0b", "b0w1", "b1w0n0", "b1w0n1", "b1w1a", "b1w1b", "b2w0a", "b2w0b"]


def test_replay_reads_bucket_by_bucket_worker_by_worker_open_segments_to_their_last_line(tmp_path: Path) -> None:
    archive_of(tmp_path)
    src = opened(source(gateway_id="gw", storage_dir=str(tmp_path), granularity=10))
    assert read_all(src, max_events=2) == ALL


def test_replay_selects_the_buckets_overlapping_from_and_to(tmp_path: Path) -> None:
    archive_of(tmp_path)

    def ids(**bounds: object) -> list[str]:
        return read_all(opened(source(gateway_id="gw", storage_dir=str(tmp_path), granularity=10, **bounds)))

    iso = lambda s: datetime.fromtimestamp(T0 + s, timezone.utc).isoformat()  # noqa: E731
    assert ids(from_time=iso(15)) == ALL[3:]  # starts at the beginning of the bucket holding it
    assert ids(from_time=iso(10)) == ALL[3:]
    assert ids(from_time=iso(9.5)) == ALL
    assert ids(from_time=iso(0), to_time=iso(10)) == ALL[:3]
    assert ids(from_time=iso(5), to_time=iso(10.5)) == ALL[:7]
    assert ids(from_time=iso(30)) == []
    naive = datetime.fromtimestamp(T0 + 20, timezone.utc).replace(tzinfo=None).isoformat()
    assert ids(from_time=naive) == ALL[7:]  # naive means UTC


def test_replay_resumes_right_after_its_position(tmp_path: Path) -> None:
    archive_of(tmp_path)
    first = opened(source(gateway_id="gw", storage_dir=str(tmp_path), granularity=10))
    batch = first.read(4, 0.0)
    assert [e["id"] for e in batch.events] == ALL[:4]
    assert batch.position == ["20260101T000010Z-w0-0", 1]
    resumed = opened(source(gateway_id="gw", storage_dir=str(tmp_path), granularity=10))
    resumed.seek(batch.position)
    assert read_all(resumed) == ALL[4:]
    middle = opened(source(gateway_id="gw", storage_dir=str(tmp_path), granularity=10))
    middle.seek(["20260101T000000Z-w0-0", 1])
    assert read_all(middle) == ALL[1:]
    gone = opened(source(gateway_id="gw", storage_dir=str(tmp_path), granularity=10))
    gone.seek(["20260101T000005Z-w0-0", 7])  # a segment that no longer exists: the next one on
    assert read_all(gone) == ALL[3:]


def test_replay_takes_storage_dir_and_granularity_from_the_profile(tmp_path: Path) -> None:
    archive_of(tmp_path)

    class Pitr:
        storage_dir, granularity = str(tmp_path), 10.0

    class Profile:
        pitr = Pitr()

    src = opened(source(gateway_id="gw", from_time="2026-01-01T00:00:20Z"), Profile())
    assert read_all(src) == ALL[7:]


def test_an_open_segment_sealed_while_listed_is_read_from_its_sealed_file(tmp_path: Path) -> None:
    directory = archive_of(tmp_path)
    (segment,) = [s for s in list_segments(directory) if not s.sealed]
    lines = list(read_lines(segment))
    segment.with_state(True).path.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n"))
    segment.path.unlink()
    assert list(read_lines(segment)) == lines
    assert select(list_segments(directory), 10, T0 + 20, None)[0].sealed


# ------------------------------------------------------------------ the pipeline hook


class RecordingArchive:
    """Remembers each append with the frames acknowledged at that moment."""

    def __init__(self, ring) -> None:
        self.ring = ring
        self.appends: list[tuple[list[bytes], int]] = []

    def append(self, batch: list[bytes]) -> None:
        self.appends.append((list(batch), self.ring.frames_acked))

    def archived_ids(self) -> list[str]:
        return [orjson.loads(p)["id"] for batch, _ in self.appends for p in batch]


def test_the_pipeline_archives_exactly_the_delivered_events_before_acknowledging(make_world) -> None:
    from tests.harness.pipeline import MemoryDeadLetterQueue

    sink = MemorySink({1: partly([1, 3], Status.REJECTED), 2: errored(), 4: rejected()})
    dlq = MemoryDeadLetterQueue()
    world = make_world(sink, dlq=dlq)
    world.pipeline.archive = archive = RecordingArchive(world.ring)
    for _ in range(4):
        world.write(4)  # sends of 4: e0-3 (1, 3 rejected), e4-7 errored then delivered, e8-11 (rejected whole), e12-15
    world.run_until_settled()
    assert archive.archived_ids() == sink.delivered
    assert sorted(archive.archived_ids(), key=lambda i: int(i[1:])) == \
        ["e0", "e2", "e4", "e5", "e6", "e7", "e12", "e13", "e14", "e15"]
    assert [ids for ids, *_ in dlq.parked] == [["e1", "e3"], ["e8", "e9", "e10", "e11"]]
    assert len(archive.appends) == 3  # one write per settled send with deliveries
    acked_before = [acked for _, acked in archive.appends]
    assert acked_before[0] == 0  # frame 1 was acknowledged only after its events were archived
    assert world.ring.frames_acked == 4


def test_a_pipeline_without_an_archive_still_works(make_world) -> None:
    world = make_world(MemorySink())
    world.write(3)
    world.run_until_settled()
    assert world.pipeline.archive is None and world.ring.frames_acked == 1


# ------------------------------------------------------------------ the command


def test_replay_profile_replaces_the_source_and_keeps_the_real_gateway_untouched() -> None:
    data = {"gateway": {"id": "main", "workers": 2}, "pitr": {"enabled": True, "granularity": "1m"},
            "metrics": {"address": "0.0.0.0:9090"}, "exactly_once": {"enabled": True},
            "source": {"type": "generator"}, "output": {"type": "file", "path": "x"}}
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    replay = replay_profile(data, "main", "/var/pitr", 60.0, start, None)
    assert replay["source"] == {"type": "pitr_replay", "gateway_id": "main", "storage_dir": "/var/pitr",
                                "granularity": 60.0, "from_time": "2026-01-01T00:00:00+00:00"}
    assert replay["gateway"] == {"id": "main-pitr-replay", "workers": 2}
    assert replay["pitr"]["enabled"] is False and replay["metrics"]["enabled"] is False
    assert replay["exactly_once"] == {"enabled": False} and "ha" not in replay
    assert replay["output"] == data["output"] and data["gateway"]["id"] == "main"


def profile_file(tmp_path: Path, **extra: object) -> Path:
    profile = {"gateway": {"id": "pitr-unit"}, "source": {"type": "generator"},
               "output": {"type": "file", "path": str(tmp_path / "out.jsonl")},
               "pitr": {"enabled": True, "granularity": "10s", "retention": "1h",
                        "storage_dir": str(tmp_path / "pitr")}, **extra}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_pitr_commands_say_when_there_is_no_archive(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = profile_file(tmp_path)
    assert main(["pitr", "list", "-c", str(path)]) == 2
    assert "no archive of gateway 'pitr-unit': no segments in " + str(tmp_path / "pitr" / "pitr-unit") in \
        capsys.readouterr().err
    assert main(["pitr", "replay", "-c", str(path), "--from", "2026-01-01T00:00:00Z"]) == 2
    assert "no archive of gateway 'pitr-unit'" in capsys.readouterr().err


def test_pitr_list_and_replay_refusals_name_the_window(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import time

    path = profile_file(tmp_path)
    now = int(time.time()) // 10 * 10
    directory = tmp_path / "pitr" / "pitr-unit"
    directory.mkdir(parents=True)
    for bucket, worker in ((now - 600, 0), (now - 590, 1), (now - 20, 0)):
        (directory / segment_name(bucket, worker, 0, sealed=False)).write_bytes(b"{}\n")
    assert main(["pitr", "list", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count(" open ") == 3 and "3 segments in" in out and "w1-0.jsonl.open" in out
    iso = lambda s: datetime.fromtimestamp(s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    window = f"the archive holds {iso(now - 600)} .. {iso(now - 10)}"
    assert window in out
    assert main(["pitr", "replay", "-c", str(path), "--from", iso(now - 7200)]) == 2
    err = capsys.readouterr().err
    assert "is outside the retained window: pitr.retention 1h keeps events since" in err and window in err
    assert main(["pitr", "replay", "-c", str(path), "--from", iso(now + 5)]) == 2
    assert "is after everything archived; " + window in capsys.readouterr().err
    assert main(["pitr", "replay", "-c", str(path), "--from", iso(now - 100), "--to", iso(now - 200)]) == 2
    assert "must be after --from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pitr", "replay", "-c", str(path), "--from", "yesterday"])
    assert "'yesterday' is not an ISO 8601 time" in capsys.readouterr().err


def test_the_guides_replication_profile_validates_with_pitr_on() -> None:
    root = Path(__file__).resolve().parents[2]
    from savegress_gw.profile import load_profile

    profile = load_profile([root / "config" / "profiles" / "replication.yaml"],
                           collect_components(get_plugin_manager())).profile
    assert profile.pitr.enabled and profile.pitr.granularity == 60.0 and profile.pitr.retention == 7 * 86400.0


def test_files_the_backup_syncer_may_upload_are_only_sealed_segments(tmp_path: Path) -> None:
    clock = Clock(T0)
    archive = writer(tmp_path, clock)
    archive.append(payloads("a"))
    uploadable = [n for n in names(tmp_path) if not n.endswith((".open", ".tmp"))]
    assert uploadable == []
    archive.close()
    assert [n for n in names(tmp_path) if not n.endswith((".open", ".tmp"))] == [segment_name(T0, 0, 0, True)]
    assert os.listdir(tmp_path) == [segment_name(T0, 0, 0, True)]


def test_the_exactly_once_loop_archives_a_transactions_output_before_its_commit_and_ack() -> None:
    from types import SimpleNamespace

    from savegress_gw.exactly_once.loop import TransactionalPipeline
    from tests.harness.pipeline import events

    calls: list[str] = []
    checkpoint = SimpleNamespace(worker=0, encode=lambda: b"{}")
    loop = TransactionalPipeline.__new__(TransactionalPipeline)
    loop.producer = SimpleNamespace(produce=lambda *a, **k: calls.append("produce checkpoint"),
                                    commit=lambda: calls.append("commit"))
    loop.ring = SimpleNamespace(ack=lambda end, count: calls.append(f"ack {count}"))
    loop.parking = SimpleNamespace(committed=lambda: None)
    loop.metrics = SimpleNamespace(inc=lambda *a, **k: None, observe=lambda *a, **k: None)
    loop.log, loop.checkpoint, loop.checkpoint_topic = LOG, checkpoint, "savegress.checkpoints.gw"
    loop._progress = SimpleNamespace(checkpoint=lambda committed: checkpoint)
    loop._skipped, loop._events = 0, 5
    loop._produced = [events(0, 2), events(2, 3)]
    loop._waiting = [SimpleNamespace(end=10), SimpleNamespace(end=20)]

    class Archive:
        def append(self, batch: list[bytes]) -> None:
            calls.append(f"archive {[orjson.loads(p)['id'] for p in batch]}")

    loop.archive = Archive()
    loop._commit()
    assert calls == ["archive ['e0', 'e1', 'e2', 'e3', 'e4']", "produce checkpoint", "commit", "ack 2"]
