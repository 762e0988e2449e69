"""The source process: read, filter, encode, route into worker rings, commit what was delivered.

Events are spread over lanes by message key (``table:pk``), lanes over workers, so every key
always goes to the same worker and keeps its order. Each read batch remembers how many of its
events are still in flight; when the workers acknowledge their frames, fully delivered batches
are committed to the source *in read order* and checkpointed every ``checkpoint.interval``.

Utilization = (events in flight + events staged for a full ring) / ``buffer.size``. Backpressure
engages at ``high_watermark`` and releases at ``low_watermark``; at a full buffer the overflow
policy applies (``block``, ``drop_newest``, ``drop_oldest``). Every drop is counted by reason.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from savegress_gw.assembly import instantiate, open_component
from savegress_gw.checkpoint import CheckpointStore
from savegress_gw.components import Backpressure, Batch, Context, Source, SourceBatch
from savegress_gw.envelope import EnvelopeError, encode, normalize
from savegress_gw.errors import EXIT_FAILURE, EXIT_OK, EXIT_WORKER_BOOT_ERROR
from savegress_gw.exactly_once.checkpoints import CheckpointTopicError, checkpoint_topic
from savegress_gw.exactly_once.frames import CLASS_LANES, SINGLE_LANE, Marker, encode_sequenced
from savegress_gw.exactly_once.setup import source_resume, wait_for_cluster
from savegress_gw.filters import TableFilter, priority_classes
from savegress_gw.logs import configure_logging
from savegress_gw.pipeline import encode_frame
from savegress_gw.ring import Ring, RingFull
from savegress_gw.spill import SpilledFrame, SpillFull, SpillQueue
from savegress_gw.staging import NORMAL, Staged
from savegress_gw.state_snapshots import SnapshotError, StateSnapshots
from savegress_gw.runtime import SOURCE_SLOT, ChildArgs, ChildRuntime, StopRequest, boot_child, report_boot_error, tune_gc

READ_CHUNK = 2048
"""Most events asked of the source per read."""
_READS_PAST_FULL = ("drop_newest", "drop_oldest", "spill")
"""Backpressure actions under which the source keeps reading whole chunks into a full buffer."""


@dataclass(eq=False)
class _ReadBatch:
    position: Any
    remaining: int
    dropped: int = 0


@dataclass
class _Frame:
    payload: bytes
    events: int
    read: _ReadBatch | None
    """None for frames recovered from a previous run's spill: delivered, but nothing to commit."""
    holds: int = -1
    """How much of ``read.remaining`` the frame holds until acknowledged: its events, plus one for
    an exactly-once marker (so a read batch commits only once every worker committed its marker)."""

    def __post_init__(self) -> None:
        if self.holds < 0:
            self.holds = self.events


@dataclass
class _Lane:
    """One worker's ring, as seen by the producer."""

    ring: Ring
    staged: Staged[_Frame] = field(default_factory=Staged)
    sent: deque[_Frame] = field(default_factory=deque)
    baseline: int = 0
    """``frames_acked`` that count: frames of an earlier source process are not ours."""
    markers: deque[_Frame] = field(default_factory=deque)
    """Exactly-once with priority classes: read-batch markers (alone in their frames), in read order,
    each waiting until no frame of its read batch is left in ``staged`` (see :meth:`Router._flush_staged`)."""
    unsent: dict[_ReadBatch, int] = field(default_factory=dict)
    """Exactly-once with priority classes: read batch → its frames still in ``staged``."""


class Router:
    """Everything between ``source.read`` and the rings, plus commits. One per source process."""

    def __init__(self, runtime: ChildRuntime, source: Source, backpressure: Backpressure | None,
                 checkpoint: CheckpointStore, lanes: list[_Lane], log: Any, spill: SpillQueue | None = None) -> None:
        profile = runtime.profile
        self.runtime, self.source, self.backpressure, self.checkpoint = runtime, source, backpressure, checkpoint
        self.lanes, self.log, self.metrics = lanes, log, runtime.metrics
        self.capacity = profile.buffer.size
        self.policy = profile.buffer.policy
        self.lane_count = profile.parallel.table_parallelism
        self.filter = TableFilter(profile.source.tables, profile.source.exclude_tables, profile.source.columns)
        priority = profile.parallel.priority
        fair = profile.selected("backpressure") == "weighted_fair"
        self.priorities = priority_classes(priority.high_priority_tables, priority.medium_priority_tables) \
            if priority.enabled or fair else None
        # With priorities, only part of the buffer is handed to the workers at once; the rest waits
        # in the priority queues, where the next frames out can be chosen.
        self.dispatch_limit = self.capacity * profile.backpressure.high_watermark if self.priorities else None
        self.source_name = profile.source.type
        self.sequenced = profile.exactly_once.enabled
        self.class_lanes = self.sequenced and self.priorities is not None
        """Exactly-once with priority classes: each class is a lane of its own, numbered in read order."""
        if self.class_lanes and source.sequence_lanes:
            raise ValueError("exactly-once with priority classes needs a single-stream source "
                             "(validation refuses the others)")
        self.ordinals: dict[str, int] = dict.fromkeys(CLASS_LANES if self.class_lanes else (SINGLE_LANE,), 0)
        """Exactly-once, single-stream source: per lane, the ordinal of the last event read (see
        :mod:`savegress_gw.exactly_once.frames`)."""
        self.reads: deque[_ReadBatch] = deque()
        self.inflight = 0
        self.staged = 0
        self.committed: Any = None
        self.paused = False
        self.spill = spill
        self._spilling = False
        self.spill_reads: deque[_ReadBatch | None] = deque()  # the read batch of each spilled frame
        self.spill_tail: deque[tuple[int, _Frame]] = deque()  # frames behind a full spill, in order
        if spill is not None:
            self.spill_reads.extend([None] * spill.records)

    # ------------------------------------------------------------------ accounting

    @property
    def utilization(self) -> float:
        return (self.inflight + self.staged) / self.capacity

    @property
    def idle(self) -> bool:
        spilled = self.spill is not None and bool(self.spill)
        return not self.reads and not self.inflight and not self.staged and not spilled and not self.spill_tail

    def collect_acks(self) -> None:
        """Release frames the workers acknowledged; commit read batches that are fully delivered."""
        for lane in self.lanes:
            acked = lane.ring.frames_acked - lane.baseline
            while acked > 0 and lane.sent:
                frame = lane.sent.popleft()
                if frame.read is not None:
                    frame.read.remaining -= frame.holds
                self.inflight -= frame.events
                lane.baseline += 1
                acked -= 1
        self._commit()

    def _commit(self) -> None:
        """Commit fully settled read batches in read order; one with drops on its own."""
        pending = None
        while self.reads and self.reads[0].remaining <= 0:
            read = self.reads.popleft()
            if read.dropped:
                self.source.commit(read.position, dropped=read.dropped)
                pending = None
            else:
                pending = read.position
            self.committed = read.position
        if pending is not None:
            self.source.commit(pending)

    # ------------------------------------------------------------------ reading

    def pump(self, stopping: bool) -> bool:
        """One round: flush staged frames, apply backpressure, read and route. True if it read."""
        self._flush_staged()
        engaged = self.backpressure.update(self.utilization) if self.backpressure else False
        action = self.backpressure.action if engaged else None
        if engaged and self.backpressure.activations != getattr(self, "_activations", 0):
            self._activations = self.backpressure.activations
            self.metrics.inc("backpressure_events_total")
        full = self.utilization >= 1.0
        self._spilling = action == "spill" or (full and self.policy == "buffer")
        self._drain_spill()
        spill_full = bool(self.spill_tail)
        self._pause(action == "pause" or stopping or spill_full)
        if stopping or action == "pause" or spill_full or self.source.exhausted or (
                full and self.policy == "block" and not self._spilling):
            return False
        room = self.capacity - self.inflight - self.staged
        want = READ_CHUNK if full or action in _READS_PAST_FULL else max(1, min(READ_CHUNK, room))
        allowance = self.backpressure.read_allowance(time.monotonic()) if self.backpressure else None
        if allowance is not None:
            if allowance < 1:
                return False
            want = min(want, int(allowance))
        timeout = 0.002 if self.inflight else 0.05
        batch = self.source.read(want, timeout)
        if batch is None or not len(batch) and batch.position is None:
            return False
        if allowance is not None:
            self.backpressure.consumed(len(batch))
        self._route(batch, drop_newest=action == "drop_newest" or (full and self.policy == "drop_newest"))
        if action == "drop_oldest" or (self.utilization > 1.0 and self.policy == "drop_oldest"):
            self._drop_oldest()
        self._flush_staged()
        return True

    def _pause(self, pause: bool) -> None:
        if pause != self.paused:
            self.paused = pause
            (self.source.pause if pause else self.source.resume)()

    def _route(self, read_batch: SourceBatch, drop_newest: bool) -> None:
        read = _ReadBatch(read_batch.position, 0)
        self.reads.append(read)
        if drop_newest:
            self.metrics.inc("events_dropped_total", len(read_batch), label="drop_newest")
            read.dropped = len(read_batch)
            return
        if self.sequenced:
            self._route_sequenced(read_batch, read)
            return
        batch = self._encoded(read_batch)
        if not batch:
            return
        self.metrics.inc("events_received_total", len(batch))
        for klass, part_of_class in self._by_priority(batch):
            for index, (lane, part) in enumerate(zip(self.lanes, self._split(part_of_class))):
                for payload, events in self._frames(part, lane.ring.capacity // 4):
                    read.remaining += events
                    self._stage(index, _Frame(payload, events, read), klass)

    def restore(self, ends: dict[str, int]) -> None:
        """Exactly-once, single-stream source: number each lane on from ``ends`` (the marker the
        source resumes at). Refuses ends of another lane layout (priority classes switched on or
        off since they were written): the events would be numbered on other lanes than before."""
        if ends and set(ends) != set(self.ordinals):
            raise CheckpointTopicError(
                f"the checkpoint topic holds progress numbered on lanes {sorted(ends)}, this profile numbers "
                f"{sorted(self.ordinals)} (parallel.priority / backpressure.strategy: weighted_fair changed). "
                "Exactly-once cannot renumber events: run with the old settings until the source is drained, "
                "or delete the checkpoint topic to start over")
        self.ordinals = {lane: ends.get(lane, 0) for lane in self.ordinals}

    def _route_sequenced(self, read_batch: SourceBatch, read: _ReadBatch) -> None:
        """Exactly-once: give every event its (lane, ordinal); end the read batch with a marker in every worker lane."""
        if self.class_lanes:
            self._route_classes(read_batch, read)
            return
        if self.source.sequence_lanes:
            kept = self._kept(read_batch)
            sequences = [self.source.event_sequence(event) for event in kept]
            batch = encode(kept, time.time_ns())
            lanes: list[str] | None = [lane for lane, _ in sequences]
            ordinals = [ordinal for _, ordinal in sequences]
            marker = Marker(dict(read_batch.position), read_batch.position)
        else:
            batch = self._encoded(read_batch)
            last = self.ordinals[SINGLE_LANE]
            lanes, ordinals = None, list(range(last + 1, last + 1 + len(batch)))
            self.ordinals[SINGLE_LANE] = last + len(batch)
            marker = Marker({SINGLE_LANE: last + len(batch)}, read_batch.position)
        if batch:
            self.metrics.inc("events_received_total", len(batch))
        for index, indices in enumerate(self._lane_indices(batch)):
            part = batch if len(indices) == len(batch) else batch.take(indices)
            for payload, events, holds in self._sequenced_frames(
                    part, [ordinals[i] for i in indices], None if lanes is None else [lanes[i] for i in indices],
                    marker, self.lanes[index].ring.capacity // 4):
                read.remaining += holds
                self._stage(index, _Frame(payload, events, read, holds))

    def _route_classes(self, read_batch: SourceBatch, read: _ReadBatch) -> None:
        """Exactly-once with priority classes (single-stream source): number each class's events
        on its own lane in read order and stage them in their class; then queue the read batch's
        marker (every lane's end) alone for every worker, to follow all of the batch's frames."""
        batch = self._encoded(read_batch)
        if batch:
            self.metrics.inc("events_received_total", len(batch))
        for klass, part_of_class in self._by_priority(batch):
            lane_name = CLASS_LANES[klass]
            last = self.ordinals[lane_name]
            self.ordinals[lane_name] = last + len(part_of_class)
            for index, indices in enumerate(self._lane_indices(part_of_class)):
                if not indices:
                    continue
                part = part_of_class if len(indices) == len(part_of_class) else part_of_class.take(indices)
                for payload, events, holds in self._sequenced_frames(
                        part, [last + 1 + i for i in indices], lane_name, None,
                        self.lanes[index].ring.capacity // 4):
                    read.remaining += holds
                    lane = self.lanes[index]
                    lane.unsent[read] = lane.unsent.get(read, 0) + 1
                    self._stage(index, _Frame(payload, events, read, holds), klass)
        marker = Marker(dict(self.ordinals), read_batch.position)
        payload = encode_sequenced(Batch.empty(), [], None, marker)
        for lane in self.lanes:
            read.remaining += 1
            lane.markers.append(_Frame(payload, 0, read, 1))

    def _sequenced_frames(self, batch: Batch, ordinals: list[int], lanes: list[str] | str | None,
                          marker: Marker | None, limit: int) -> list[tuple[bytes, int, int]]:
        """``(payload, events, holds)`` of frames of at most ``limit`` bytes; the marker goes on the
        last (alone, when the batch is empty or its last event was too large to send). ``lanes``:
        one per event, or one for all (a string), or None for lane ``""``."""
        n = len(batch)
        per_event = isinstance(lanes, list)

        def encode_range(start: int, stop: int) -> bytes:
            return encode_sequenced(batch.slice(start, stop), ordinals[start:stop],
                                    lanes[start:stop] if per_event else lanes, marker if stop == n else None)

        frames = [(payload, stop - start, stop - start + (stop == n and marker is not None))
                  for payload, start, stop in self._fitting(batch, encode_range, limit)]
        if marker is None:
            return frames
        if not frames or frames[-1][2] == frames[-1][1]:  # no frame ended at n: the marker travels alone
            frames.append((encode_sequenced(Batch.empty(), [], None, marker), 0, 1))
        return frames

    def _by_priority(self, batch: Batch) -> list[tuple[int, Batch]]:
        """``batch`` split by priority class of its tables (one NORMAL part without priorities)."""
        if self.priorities is None:
            return [(NORMAL, batch)]
        classes: dict[int, list[int]] = {}
        for i, (schema, table) in enumerate(zip(batch.schemas, batch.tables)):
            classes.setdefault(self.priorities(schema, table), []).append(i)
        if len(classes) == 1:
            return [(next(iter(classes)), batch)]
        return [(klass, batch.take(indices)) for klass, indices in sorted(classes.items())]

    def _stage(self, index: int, frame: _Frame, klass: int = NORMAL) -> None:
        """Queue ``frame`` for lane ``index``: in memory, or behind whatever is spilled (order holds)."""
        if self.spill is not None and (self._spilling or self.spill or self.spill_tail):
            if not self.spill_tail:
                try:
                    self.spill.append(SpilledFrame(index, frame.events, frame.payload))
                    self.spill_reads.append(frame.read)
                    self.metrics.inc("events_spilled_total", frame.events)
                    self.metrics.set("spill_bytes", self.spill.bytes)
                    return
                except SpillFull:
                    self.log.warning("spill is full: pausing the source until it drains",
                                     max_bytes=self.spill.max_bytes)
            self.spill_tail.append((index, frame))
            return
        self.lanes[index].staged.append(frame, klass)
        self.staged += frame.events

    def _drain_spill(self) -> None:
        """Feed spilled frames (then those behind a full spill) back, in order, while there is room."""
        if self.spill is None or self._spilling:
            return
        limit = self.backpressure.high_watermark if self.backpressure is not None else 1.0
        while self.utilization < limit and (self.spill or self.spill_tail):
            if self.spill:
                spilled = self.spill.pop()
                frame = _Frame(spilled.payload, spilled.events, self.spill_reads.popleft())
                index = spilled.lane % len(self.lanes)
            else:
                index, frame = self.spill_tail.popleft()
            self.lanes[index].staged.append(frame)
            self.staged += frame.events
        self.metrics.set("spill_bytes", self.spill.bytes)

    def _frames(self, batch: Batch, limit: int) -> list[tuple[bytes, int]]:
        """Encode ``batch`` as frames of at most ``limit`` bytes: ``(payload, events)``."""
        def encode_range(start: int, stop: int) -> bytes:
            return encode_frame(batch if stop - start == len(batch) else batch.slice(start, stop))

        return [(payload, stop - start) for payload, start, stop in self._fitting(batch, encode_range, limit)]

    def _fitting(self, batch: Batch, encode_range: Callable[[int, int], bytes],
                 limit: int) -> list[tuple[bytes, int, int]]:
        """``(payload, start, stop)`` covering ``batch`` in order with payloads of at most ``limit``
        bytes, halving ranges that do not fit; an event that alone does not fit is dropped (counted
        and logged), so the frames may leave gaps.

        A loop over a stack of ranges, not a recursive closure: a closure that calls itself is a
        reference cycle, and each one kept a whole read batch and its frames alive until the cyclic
        collector ran, which on the tuned collector (:func:`~savegress_gw.runtime.tune_gc`) let the
        source process grow by gigabytes within seconds."""
        frames: list[tuple[bytes, int, int]] = []
        ranges = [(0, len(batch))] if len(batch) else []
        while ranges:
            start, stop = ranges.pop()
            payload = encode_range(start, stop)
            if len(payload) <= limit:
                frames.append((payload, start, stop))
            elif stop - start == 1:
                self.metrics.inc("events_dropped_total", label="rejected")
                self.log.error("event larger than a quarter of the worker ring dropped (no dead-letter queue yet); "
                               "raise gateway.ring_size", event_id=batch.ids[start], bytes=len(payload), limit=limit)
            else:
                middle = (start + stop) // 2
                ranges += [(middle, stop), (start, middle)]  # the first half is taken next: frames stay in order
        return frames

    def _encoded(self, read_batch: SourceBatch) -> Batch:
        """The read batch filtered, normalized (unless trusted) and encoded as columns."""
        now = time.time_ns()
        if read_batch.encoded is not None and not self.filter.columns:
            batch = self._table_filtered(read_batch.encoded) if self.filter.active else read_batch.encoded
            batch.ingest_ns = [now] * len(batch)
            return batch
        return encode(self._kept(read_batch), now)

    def _table_filtered(self, batch: Batch) -> Batch:
        """An encoded batch without the events of tables the filter leaves out (as ``filter.apply``;
        without column lists the rows themselves stay as they are, so no payload is decoded)."""
        allows = self.filter.allows
        kept = [i for i, (schema, table) in enumerate(zip(batch.schemas, batch.tables))
                if not table or allows(schema, table)]
        if len(kept) == len(batch):
            return batch
        self.metrics.inc("events_dropped_total", len(batch) - len(kept), label="filtered")
        return batch.take(kept)

    def _kept(self, read_batch: SourceBatch) -> list[dict[str, Any]]:
        """The read batch's events that pass the filters, normalized (unless the source is trusted)."""
        events = read_batch.events
        if read_batch.encoded is not None:  # filters need the events themselves: the slow path
            events = [orjson.loads(payload) for payload in read_batch.encoded.payloads]
        kept = self.filter.apply(events)
        if len(kept) != len(events):
            self.metrics.inc("events_dropped_total", len(events) - len(kept), label="filtered")
        if not self.source.trusted:
            kept = self._normalized(kept)
        return kept

    def _normalized(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for offset, event in enumerate(events):
            try:
                out.append(normalize(event, self.source_name))
            except EnvelopeError as exc:
                self.metrics.inc("events_dropped_total", label="rejected")
                self.log.error("invalid event from source dropped (no dead-letter queue yet)", reason=str(exc),
                               offset_in_batch=offset)
        return out

    def _split(self, batch: Batch) -> list[Batch]:
        if len(self.lanes) == 1:
            return [batch]
        return [batch.take(idx) if len(idx) != len(batch) else batch for idx in self._lane_indices(batch)]

    def _lane_indices(self, batch: Batch) -> list[list[int]]:
        """For each worker, the indices of ``batch``'s events it gets (by key: lane, then worker)."""
        workers, lanes = len(self.lanes), self.lane_count
        if workers == 1:
            return [list(range(len(batch)))]
        indices: list[list[int]] = [[] for _ in range(workers)]
        for i, key in enumerate(batch.keys):
            indices[zlib.crc32(key.encode()) % lanes % workers].append(i)
        return indices

    def _flush_staged(self) -> None:
        """Hand staged frames to the rings (by class turns), up to ``dispatch_limit`` events in flight.

        Exactly-once with priority classes: a read batch's marker goes into a worker's ring as
        soon as, and only once, none of the batch's frames for that worker is left in ``staged``
        (those of earlier batches went before their own markers), so it never claims events still
        queued, and markers reach a worker in read order."""
        limit = self.dispatch_limit
        for lane in self.lanes:
            while True:
                if lane.markers and not lane.unsent.get(lane.markers[0].read):
                    if not self._hand_over(lane, lane.markers[0]):
                        break
                    lane.markers.popleft()
                    continue
                if not lane.staged or (limit is not None and self.inflight >= limit):
                    break
                frame = lane.staged.peek()
                if not self._hand_over(lane, frame):
                    break
                lane.staged.pop()
                self.staged -= frame.events
                self.inflight += frame.events
                if lane.unsent:
                    left = lane.unsent[frame.read] - 1
                    if left:
                        lane.unsent[frame.read] = left
                    else:
                        del lane.unsent[frame.read]

    @staticmethod
    def _hand_over(lane: _Lane, frame: _Frame) -> bool:
        """Write ``frame`` into ``lane``'s ring and count it as sent; False if the ring is full."""
        try:
            lane.ring.write(frame.payload)
        except RingFull:
            return False
        lane.sent.append(frame)
        return True

    def _drop_oldest(self) -> None:
        """Drop staged (not yet handed to a worker) frames, oldest of the least important class
        first, until the buffer fits."""
        for lane in self.lanes:
            while lane.staged and self.utilization > 1.0:
                frame = lane.staged.pop_least_important()
                if frame.read is not None:
                    frame.read.remaining -= frame.holds
                    frame.read.dropped += frame.events
                self.staged -= frame.events
                self.metrics.inc("events_dropped_total", frame.events, label="drop_oldest")

    snapshots: StateSnapshots | None = None
    """Periodic state snapshots of the checkpoint (None: off, or nothing durable to copy; :func:`_state_snapshots`)."""

    def checkpoint_if_due(self, now: float, force: bool = False) -> None:
        """Save the committed position every ``checkpoint.interval`` (``force``: now). After a save
        that is not forced, take a state snapshot of it when one is due (never at shutdown)."""
        if self.committed is not None and (force or self.checkpoint.due(now)):
            record = self.checkpoint.save(self.committed)
            if not force and self.snapshots is not None and self.snapshots.due(now):
                self._snapshot(self.snapshots, record, now)
        self.metrics.set("checkpoint_age_seconds", now - self.checkpoint.saved_at)

    def _snapshot(self, snapshots: StateSnapshots, record: dict[str, Any], now: float) -> None:
        """Copy the checkpoint ``record`` just saved into a state snapshot, unless the position has not
        moved since the last one (an idle source would otherwise push every older one out); a
        failure is logged and the next attempt waits another ``snapshot.interval``."""
        if self.committed == snapshots.last_position:
            return
        try:
            taken = snapshots.take(record, now)
        except SnapshotError as exc:
            self.log.error("state snapshot failed; trying again after snapshot.interval", error=str(exc),
                           directory=str(snapshots.directory))
            return
        self.log.info("state snapshot taken", snapshot=taken.name, file=str(taken.path))


def main(args: ChildArgs) -> None:
    """Entry point of the source process."""
    stop = StopRequest()
    try:
        runtime = boot_child(args, "source", SOURCE_SLOT)
        log = configure_logging(runtime.profile.logging, "source")
        router = _build(runtime, log)
    except Exception as exc:
        report_boot_error(args, "source", exc)
        sys.exit(EXIT_WORKER_BOOT_ERROR)
    runtime.report("ready", "")
    tune_gc()
    code = EXIT_OK
    try:
        finished = _run(runtime, router, stop)
        if finished:
            runtime.report("finished", "source exhausted and every event delivered")
    except Exception:
        log.exception("source process failed")
        code = EXIT_FAILURE
    finally:
        router.source.close()
        if router.backpressure is not None:
            router.backpressure.close()
        for lane in router.lanes:
            lane.ring.close()
        if router.spill is not None:
            router.spill.close()
    sys.exit(code)


def _build(runtime: ChildRuntime, log: Any) -> Router:
    profile, registry = runtime.profile, runtime.registry
    source = instantiate("source", profile, registry)
    backpressure = instantiate("backpressure", profile, registry)
    checkpoint = CheckpointStore(profile.checkpoint, profile.gateway.id, profile.source.type,
                                 resumable=source.resumable)
    ends: dict[str, int] = {}
    if profile.exactly_once.enabled:  # the checkpoint topic, not the file, says what is in Kafka
        wait_for_cluster(profile, "source", runtime.beat, log)
        position, ends = source_resume(profile, source.sequence_lanes, log)
        where = f"checkpoint topic {checkpoint_topic(profile.gateway.id)}"
    else:
        position, where = checkpoint.load(), str(checkpoint.path)

    def context(kind: str) -> Context:
        return Context(process="source", worker_index=-1, log=log.bind(component=kind), profile=profile,
                       shared=runtime.args.shared.get(kind), metrics=runtime.metrics)

    open_component(source, context("source"))
    if backpressure is not None:
        open_component(backpressure, context("backpressure"))
    if position is not None:
        source.seek(position)
        log.info("resuming from checkpoint", position=position, checkpoint=where)
    # Frames an earlier source process wrote are still delivered by the workers, but not ours to count.
    lanes = [_Lane(ring, baseline=ring.frames_written) for ring in map(Ring.attach, runtime.args.ring_names)]
    router = Router(runtime, source, backpressure, checkpoint, lanes, log, _spill(profile, backpressure, log))
    if not source.sequence_lanes:
        router.restore(ends)
    router.snapshots = _state_snapshots(profile, checkpoint, log)
    return router


def _state_snapshots(profile: Any, checkpoint: CheckpointStore, log: Any) -> StateSnapshots | None:
    """Periodic state snapshots when the profile asks for them (``snapshot.enabled`` and
    ``snapshot.interval``) and there is a durable checkpoint to copy; otherwise None, with one
    warning saying why when they were asked for (the gateway runs on without them)."""
    settings = profile.snapshot
    if not (settings.enabled and settings.interval is not None):
        return None
    why = None
    if not checkpoint.settings.enabled:
        why = "checkpoints are off (checkpoint.enabled: false), so there is no position to snapshot"
    elif not checkpoint.enabled:
        why = f"source {profile.source.type!r} keeps no position to resume from"
    elif not checkpoint.durable:
        why = "checkpoint.type is memory: the position does not outlive the process, so it cannot be restored"
    if why is not None:
        log.warning(f"periodic state snapshots are skipped: {why}", snapshot_interval=settings.interval)
        return None
    snapshots = StateSnapshots(settings, profile.gateway.id)
    try:
        snapshots.recall()
    except OSError as exc:
        log.warning("cannot read the existing state snapshots", error=str(exc), directory=str(snapshots.directory))
    log.info("periodic state snapshots", interval=settings.interval, retention_count=settings.retention_count,
             directory=str(snapshots.directory))
    return snapshots


def _spill(profile: Any, backpressure: Backpressure | None, log: Any) -> SpillQueue | None:
    """The spill, when the overflow policy or the backpressure strategy is ``buffer``."""
    wanted = profile.buffer.policy == "buffer" or (backpressure is not None and backpressure.action == "spill")
    if not wanted:
        return None
    overflow = profile.buffer.overflow
    spill = SpillQueue(overflow.path, overflow.max_size, overflow.compression, log.bind(component="spill"))
    spill.open()
    return spill


def _run(runtime: ChildRuntime, router: Router, stop: StopRequest) -> bool:
    """Pump until stopped (drain in-flight first) or the source is exhausted. True if exhausted."""
    graceful = runtime.profile.gateway.graceful_timeout
    while True:
        now = time.monotonic()
        runtime.beat(now)
        router.collect_acks()
        router.metrics.set("buffer_utilization", router.utilization)
        router.checkpoint_if_due(now)
        deadline = stop.deadline(now, graceful)
        if deadline is not None and (router.idle or now > deadline):
            router.checkpoint_if_due(now, force=True)
            return False
        if router.source.exhausted and router.idle:
            router.checkpoint_if_due(now, force=True)
            return True
        if runtime.orphaned():
            return False
        if not router.pump(stopping=deadline is not None):
            time.sleep(0.0005 if router.inflight else 0.002)
