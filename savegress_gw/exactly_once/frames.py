"""Ring frames under exactly-once: the batch's columns, each event's sequence, and a read-batch marker.

A *sequenced frame* is the msgpack list ``[*batch columns, ordinals, lanes, marker]``. Every event
has a *lane* and an *ordinal* that grows along its lane and is the same when the source reads the
event again: a single-stream source (file, WAL, generator) has the one lane ``""`` and ordinals
numbered by the source process in read order (1, 2, ... continued across restarts); a source of
several streams names each event's lane itself (``Source.event_sequence``, e.g. a Kafka partition
and its offset). ``lanes`` is None when every event is on lane ``""``, a string when every event
of the frame is on that one lane (the priority-class lanes below), else one lane per event.

Under ``parallel.priority`` (or ``backpressure.strategy: weighted_fair``) a single-stream source
numbers each priority class as its own lane (:data:`CLASS_LANES`): the source process hands a
worker its classes' frames in weighted turns, not in read order, but in read order within a
class, so a worker still sees every lane's ordinals rising.

``marker`` is set on the last frame a read batch sends to a worker (a worker with no events of that
read batch still gets one, empty): ``[ends, position]``, where ``ends`` maps each lane to the
ordinal of its last event read so far and ``position`` is the source position after the read
batch. A worker that has committed a marker has seen every event of its share of each lane up to
``ends[lane]``. With priority classes the marker travels alone, and only once every frame of its
read batch (and of the earlier ones) for that worker, whatever its class, is in the worker's ring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from savegress_gw.components import Batch

_COLUMNS = len(Batch.COLUMNS)
SINGLE_LANE = ""
"""The lane of every event of a single-stream source."""
CLASS_LANES = ("high", "medium", "normal")
"""With priority classes: the lane of each class (by :mod:`~savegress_gw.staging` class index)."""


@dataclass(frozen=True, slots=True)
class Marker:
    """The end of a read batch: per lane, the ordinal of the last event read before ``position``."""

    ends: dict[str, int]
    position: Any


@dataclass(slots=True)
class SequencedFrame:
    batch: Batch
    ordinals: list[int]
    lanes: list[str] | str | None
    marker: Marker | None

    def lane(self, index: int) -> str:
        lanes = self.lanes
        return SINGLE_LANE if lanes is None else lanes if isinstance(lanes, str) else lanes[index]

    @property
    def one_lane(self) -> str | None:
        """The lane of every event when the frame names one for all (None: one lane per event)."""
        lanes = self.lanes
        return SINGLE_LANE if lanes is None else lanes if isinstance(lanes, str) else None


def encode_sequenced(batch: Batch, ordinals: list[int], lanes: list[str] | str | None,
                     marker: Marker | None) -> bytes:
    tail = None if marker is None else [marker.ends, marker.position]
    return msgpack.packb([*batch.to_columns(), ordinals, lanes, tail], use_bin_type=True)


def decode_sequenced(payload: bytes | memoryview) -> SequencedFrame:
    fields = msgpack.unpackb(payload, raw=False)
    if len(fields) != _COLUMNS + 3:
        raise ValueError(f"not a sequenced frame: {len(fields)} fields, expected {_COLUMNS + 3}")
    tail = fields[_COLUMNS + 2]
    return SequencedFrame(Batch.from_columns(fields[:_COLUMNS]), fields[_COLUMNS], fields[_COLUMNS + 1],
                          None if tail is None else Marker(tail[0], tail[1]))
