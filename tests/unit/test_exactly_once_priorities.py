"""Exactly-once with priority classes: each class is an ordinal lane of its own, markers follow
every frame of their read batch whatever its class, and restarts give the same ordinals.

The router is the real one (:class:`~savegress_gw.source_process.Router`) over fake rings; the
worker side is the real per-lane skipping and marker logic (:class:`~savegress_gw.exactly_once.loop._Progress`)
with transactions modelled as "produce into a list, commit = append it to the output".
"""

from __future__ import annotations

import random
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import structlog

from savegress_gw.components import Batch, SourceBatch
from savegress_gw.exactly_once.checkpoints import CheckpointTopicError, WorkerCheckpoint, resume_marker, \
    resume_point
from savegress_gw.exactly_once.frames import CLASS_LANES, decode_sequenced
from savegress_gw.exactly_once.loop import _Progress
from savegress_gw.exactly_once.validation import exactly_once_problems
from savegress_gw.ring import RingFull
from savegress_gw.source_process import Router, _Lane

TABLES = ("users", "orders", "payments", "logs")
"""orders is high, payments medium, the rest normal."""


class Metrics:
    def inc(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set(self, *args: Any, **kwargs: Any) -> None:
        pass


class FakeRing:
    """A worker ring holding at most ``room`` unacknowledged frames."""

    capacity = 1 << 20

    def __init__(self, room: int) -> None:
        self.frames: list[bytes] = []
        self.room, self.acked, self.read = room, 0, 0

    @property
    def frames_written(self) -> int:
        return len(self.frames)

    @property
    def frames_acked(self) -> int:
        return self.acked

    def write(self, payload: bytes) -> None:
        if len(self.frames) - self.acked >= self.room:
            raise RingFull("full")
        self.frames.append(bytes(payload))


class Source:
    """A single-stream source replaying ``events`` from any position (the index of the next event)."""

    sequence_lanes = False
    trusted = True

    def __init__(self, events: list[tuple[str, int, int]]) -> None:
        self.events, self.at = events, 0
        self.commits: list[Any] = []

    def commit(self, position: Any, dropped: int = 0) -> None:
        self.commits.append(position)

    def read(self, n: int) -> SourceBatch:
        part = self.events[self.at:self.at + n]
        self.at += len(part)
        m = len(part)
        batch = Batch([orjson.dumps({"seq": seq, "table": table, "pk": pk}) for table, pk, seq in part],
                      [f"public.{table}:{pk}" for table, pk, _ in part], [f"e{seq}" for _, _, seq in part],
                      ["INSERT"] * m, ["public"] * m, [table for table, _, _ in part], [0] * m, [0] * m)
        return SourceBatch([], self.at, encoded=batch)


def profile(priorities: bool = True, workers: int = 2, size: int = 100_000) -> Any:
    return SimpleNamespace(
        buffer=SimpleNamespace(size=size, policy="block"),
        parallel=SimpleNamespace(table_parallelism=8, priority=SimpleNamespace(
            enabled=priorities, high_priority_tables=["orders"], medium_priority_tables=["payments"])),
        backpressure=SimpleNamespace(high_watermark=0.85),
        selected=lambda section: "pause",
        source=SimpleNamespace(tables=[], exclude_tables=[], columns={}, type="generator"),
        exactly_once=SimpleNamespace(enabled=True),
        gateway=SimpleNamespace(workers=workers),
    )


def router(source: Source, rings: list[FakeRing], priorities: bool = True) -> Router:
    runtime = SimpleNamespace(profile=profile(priorities, len(rings)), metrics=Metrics())
    lanes = [_Lane(ring, baseline=ring.frames_written) for ring in rings]  # type: ignore[arg-type]
    return Router(runtime, source, None, None, lanes, structlog.get_logger())  # type: ignore[arg-type]


def events(n: int, seed: int = 1) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    return [(rng.choice(TABLES), rng.randrange(40), seq) for seq in range(1, n + 1)]


def read(r: Router, source: Source, n: int) -> None:
    r._route(source.read(n), drop_newest=False)
    r._flush_staged()


class Worker:
    """A worker's exactly-once loop in miniature: frames in ring order, per-lane skipping, markers,
    commits that append the transaction's events to ``out`` and acknowledge its frames."""

    def __init__(self, index: int, ring: FakeRing, out: list[tuple[int, str]], workers: int = 2) -> None:
        self.index, self.ring, self.out = index, ring, out
        self.checkpoint = WorkerCheckpoint(index, workers, 8, "generator")
        self.crash()
        self.markers: list[Any] = []

    def crash(self) -> None:
        """Lose the open transaction; the replacement reads the ring from the last acknowledgement."""
        self.ring.read = self.ring.acked
        self.progress = _Progress(self.checkpoint)
        self.open: list[tuple[int, str]] = []
        self.frames = 0

    def step(self, frames: int) -> int:
        done = 0
        while done < frames and self.ring.read < len(self.ring.frames):
            frame = decode_sequenced(self.ring.frames[self.ring.read])
            self.ring.read += 1
            keep = self.progress.keep(frame)
            indices = range(len(frame.batch)) if keep is None else keep
            for i in indices:
                self.open.append((orjson.loads(frame.batch.payloads[i])["seq"], frame.batch.keys[i]))
            if frame.marker is not None:
                self.progress.mark(frame.marker)
                self.markers.append(frame.marker)
            self.frames += 1
            done += 1
        return done

    def commit(self) -> None:
        self.out.extend(self.open)
        self.checkpoint = self.progress.checkpoint(self.checkpoint)
        self.ring.acked += self.frames
        self.open, self.frames = [], 0


# ---------------------------------------------------------------------------------------- ordinals


def test_each_class_is_a_lane_numbered_in_read_order_and_a_marker_ends_every_class() -> None:
    source = Source(events(300))
    rings = [FakeRing(10_000)]
    r = router(source, rings)
    for size in (50, 120, 130):
        read(r, source, size)
    frames = [decode_sequenced(payload) for payload in rings[0].frames]
    by_lane: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for frame in frames:
        for i, ordinal in enumerate(frame.ordinals):
            by_lane[frame.lane(i)].append((ordinal, orjson.loads(frame.batch.payloads[i])["seq"]))
    expected = {"high": "orders", "medium": "payments"}
    for lane, seen in by_lane.items():
        seqs = sorted(seq for _, seq in seen)
        tables = [t for t, _, s in source.events if s in set(seqs)]
        assert set(tables) == ({expected[lane]} if lane in expected else {"users", "logs"})
        assert sorted(seen) == list(zip(range(1, len(seen) + 1), seqs)), f"lane {lane}: 1, 2, ... in read order"
    markers = [frame.marker for frame in frames if frame.marker is not None]
    assert [m.position for m in markers] == [50, 170, 300]
    assert markers[-1].ends == {lane: len(by_lane[lane]) for lane in CLASS_LANES}
    assert all(frame.marker is None or len(frame.batch) == 0 for frame in frames), "markers travel alone"


def test_without_priorities_the_single_lane_is_unchanged() -> None:
    source = Source(events(100))
    rings = [FakeRing(10_000)]
    r = router(source, rings, priorities=False)
    read(r, source, 100)
    frames = [decode_sequenced(payload) for payload in rings[0].frames]
    assert [o for f in frames for o in f.ordinals] == list(range(1, 101))
    assert frames[-1].marker is not None and frames[-1].marker.ends == {"": 100}


# ------------------------------------------------------------------------- markers under 4 : 2 : 1


def test_a_marker_follows_every_frame_of_its_read_batch_while_the_high_class_overtakes() -> None:
    """Rings of 3 frames, a worker taking one frame a step: frames back up in the classes, high
    frames of later read batches overtake normal ones of earlier batches, yet each marker reaches
    the worker after every event of its read batch (and the earlier ones) for that worker, and
    markers arrive in read order."""
    source = Source(events(4000, seed=5))
    rings = [FakeRing(3), FakeRing(3)]
    r = router(source, rings)
    out: list[tuple[int, str]] = []
    workers = [Worker(i, ring, out) for i, ring in enumerate(rings)]
    seen: list[set[int]] = [set(), set()]
    overtaken = 0
    shares: list[dict[int, int]] = [{}, {}]  # per worker: seq -> read position after its batch
    for _ in range(100_000):
        if source.at >= len(source.events) and r.idle:
            break
        if source.at < len(source.events) and r.staged < 600:
            start = source.at
            read(r, source, 37)
            for seq in range(start + 1, source.at + 1):
                table, pk = source.events[seq - 1][:2]
                key = f"public.{table}:{pk}"
                worker = next(i for i, idx in enumerate(r._lane_indices(_one_key(key))) if idx)
                shares[worker][seq] = source.at
        r._flush_staged()
        for w, worker in enumerate(workers):
            before = len(worker.markers)
            opened = len(worker.open)
            worker.step(1)
            for seq, _ in worker.open[opened:]:
                if any(s > seq and shares[w][s] > shares[w][seq] for s in seen[w]):
                    overtaken += 1
                seen[w].add(seq)
            if len(worker.markers) > before:
                marker = worker.markers[-1]
                claimed = {seq for seq, position in shares[w].items() if position <= marker.position}
                assert claimed <= seen[w], f"marker at {marker.position} claims events still queued"
            if worker.frames >= 4 or (worker.frames and worker.ring.read == len(worker.ring.frames)):
                worker.commit()
        r.collect_acks()
    else:
        pytest.fail("did not finish")
    for worker in workers:
        positions = [m.position for m in worker.markers]
        assert positions == sorted(positions) and positions[-1] == 4000
    assert overtaken > 0, "the weighted dispatch never reordered anything: the test proves nothing"
    assert sorted(seq for seq, _ in out) == list(range(1, 4001))
    assert source.commits[-1] == 4000


def _one_key(key: str) -> Batch:
    return Batch([b""], [key], ["x"], ["INSERT"], ["public"], ["t"], [0], [0])


# --------------------------------------------------------------------------------- restarts


def resume(workers: list[Worker]) -> tuple[Any, dict[str, int]]:
    return resume_marker({w.index: w.checkpoint for w in workers}, len(workers), 8, "generator", per_lane=False)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("fault", ["worker", "source", "both", "everything"])
def test_crashes_while_classes_are_interleaved_lose_and_double_nothing(seed: int, fault: str) -> None:
    """A stream through 2 workers with small rings and uneven commits; at random moments a worker
    loses its open transaction, the source process restarts from the lowest committed marker (the
    rings keep their frames), both, or everything (fresh rings). The committed output has every
    event exactly once, in per-key order."""
    rng = random.Random(seed)
    total = 3000
    source = Source(events(total, seed))
    rings = [FakeRing(rng.choice((2, 3, 5))), FakeRing(rng.choice((2, 3, 5)))]
    out: list[tuple[int, str]] = []
    workers = [Worker(i, ring, out) for i, ring in enumerate(rings)]
    r = router(source, rings)
    faults = 0
    for step in range(100_000):
        if source.at >= total and r.idle:
            break
        if rng.random() < 0.01 and faults < 8:
            faults += 1
            if fault in ("worker", "both"):
                rng.choice(workers).crash()
            if fault == "everything":
                for i, worker in enumerate(workers):
                    worker.ring = rings[i] = FakeRing(rings[i].room)
                    worker.crash()
            if fault in ("source", "both", "everything"):
                position, ends = resume(workers)
                source = Source(source.events)
                source.at = position or 0
                r = router(source, rings)
                r.restore(ends)
        if source.at < total and r.staged < 400:
            read(r, source, rng.randrange(1, 60))
        r._flush_staged()
        for worker in workers:
            worker.step(rng.randrange(0, 3))
            if worker.frames and rng.random() < 0.3:
                worker.commit()
        r.collect_acks()
    else:
        pytest.fail("did not finish")
    for worker in workers:  # the last open transactions
        worker.step(10**9)
        worker.commit()
    assert faults > 0
    seqs = [seq for seq, _ in out]
    assert len(seqs) == len(set(seqs)), f"{len(seqs) - len(set(seqs))} duplicates"
    assert sorted(seqs) == list(range(1, total + 1)), f"{total - len(set(seqs))} missing"
    last: dict[str, int] = {}
    for seq, key in out:
        assert last.get(key, 0) < seq, f"key {key}: {last[key]} then {seq}"
        last[key] = seq


def test_a_restart_numbers_every_class_on_from_the_lowest_marker() -> None:
    source = Source(events(500, seed=3))
    rings = [FakeRing(10_000)]
    r = router(source, rings)
    for _ in range(5):
        read(r, source, 100)
    first = [decode_sequenced(p) for p in rings[0].frames]
    marker = [f.marker for f in first if f.marker is not None][1]  # after 200 events
    again = Source(source.events)
    again.at = marker.position
    rings2 = [FakeRing(10_000)]
    r2 = router(again, rings2)
    r2.restore(marker.ends)
    for _ in range(3):
        read(r2, again, 100)

    def numbering(frames: list[Any]) -> dict[int, tuple[str, int]]:
        return {orjson.loads(f.batch.payloads[i])["seq"]: (f.lane(i), o)
                for f in frames for i, o in enumerate(f.ordinals)}

    before, after = numbering(first), numbering([decode_sequenced(p) for p in rings2[0].frames])
    assert set(after) == set(range(201, 501))
    assert after == {seq: before[seq] for seq in after}


def test_the_lowest_marker_is_found_over_class_lanes_and_old_layouts_are_refused() -> None:
    def checkpoint(worker: int, ends: dict[str, int], position: int) -> WorkerCheckpoint:
        return WorkerCheckpoint(worker, 2, 8, "generator", dict(ends), ends, position)

    checkpoints = {0: checkpoint(0, {"high": 40, "medium": 5, "normal": 70}, 115),
                   1: checkpoint(1, {"high": 30, "medium": 5, "normal": 60}, 95)}
    assert resume_marker(checkpoints, 2, 8, "generator", per_lane=False) == (
        95, {"high": 30, "medium": 5, "normal": 60})
    assert resume_point(checkpoints, 2, 8, "generator", per_lane=False) == (95, 0)
    source = Source([])
    with pytest.raises(CheckpointTopicError, match="lanes"):
        router(source, [FakeRing(10)]).restore({"": 95})  # written without priorities
    with pytest.raises(CheckpointTopicError, match="lanes"):
        router(source, [FakeRing(10)], priorities=False).restore({"high": 1, "medium": 0, "normal": 3})


# ------------------------------------------------------------------------------- validation


def test_priorities_are_refused_only_for_a_source_with_lanes_of_its_own() -> None:
    from savegress_gw.plugins import load_registry

    registry = load_registry()
    base = SimpleNamespace(
        exactly_once=SimpleNamespace(enabled=True, idempotent_producer=True),
        selected=None, output=SimpleNamespace(acks=None), replication=SimpleNamespace(model_fields_set=set()),
        buffer=SimpleNamespace(policy="block"), parallel=SimpleNamespace(priority=SimpleNamespace(enabled=True)))

    def problems(source: str) -> list[str]:
        kinds = {"sink": "kafka", "source": source, "backpressure": "weighted_fair", "dlq": None}
        return exactly_once_problems(SimpleNamespace(**{**vars(base), "selected": kinds.get}), registry)

    assert problems("generator") == [] and problems("file") == [] and problems("postgres") == []
    (problem,) = problems("kafka")
    assert problem.startswith("backpressure.strategy: priorities reorder events between read batches, and "
                              "source 'kafka'") and "exactly_once.enabled is true" in problem
