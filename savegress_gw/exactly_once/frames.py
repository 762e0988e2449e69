"""Ring frames under exactly-once: the batch's columns, each event's ordinal, and a read-batch marker.

A *sequenced frame* is the msgpack list ``[*batch columns, ordinals, marker]``. ``ordinals`` are the
events' numbers in the source's read order (1, 2, ... from the first event ever read, continued
across restarts from the checkpoint). ``marker`` is set on the last frame a read batch sends to a
worker (a worker with no events of that read batch still gets one, empty): ``[end, position]`` =
the ordinal of the read batch's last event and the source position after it. A worker that has
committed a marker has seen every event of its lane up to ``end``; the source may restart from
``position`` with ordinal ``end + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from savegress_gw.components import Batch

_COLUMNS = len(Batch.COLUMNS)


@dataclass(frozen=True, slots=True)
class Marker:
    """The end of a read batch: every event up to ordinal ``end`` was read before ``position``."""

    end: int
    position: Any


@dataclass(slots=True)
class SequencedFrame:
    batch: Batch
    ordinals: list[int]
    marker: Marker | None


def encode_sequenced(batch: Batch, ordinals: list[int], marker: Marker | None) -> bytes:
    tail = None if marker is None else [marker.end, marker.position]
    return msgpack.packb([*batch.to_columns(), ordinals, tail], use_bin_type=True)


def decode_sequenced(payload: bytes) -> SequencedFrame:
    fields = msgpack.unpackb(payload, raw=False)
    if len(fields) != _COLUMNS + 2:
        raise ValueError(f"not a sequenced frame: {len(fields)} fields, expected {_COLUMNS + 2}")
    tail = fields[_COLUMNS + 1]
    return SequencedFrame(Batch.from_columns(fields[:_COLUMNS]), fields[_COLUMNS],
                          None if tail is None else Marker(tail[0], tail[1]))
