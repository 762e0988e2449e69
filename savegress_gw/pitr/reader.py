"""Reading the archive back: which segments a time range selects, and their envelopes in order.

Selection: a segment is selected when its bucket ``[start, start + granularity)`` overlaps the
asked range ``[from, to)``; events are not filtered by time inside a segment, so a replay starts
at the beginning of the bucket holding ``from``. Order: by bucket, then worker, then ``n``: every
event of a key was delivered by one worker, so this keeps per-key order.

Reading: a sealed segment is streamed through zstd; an open one (its worker still writes it) is
read up to its last complete line. An open segment that was sealed meanwhile is read from its
sealed file instead.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from savegress_gw.pitr.layout import Segment, list_segments


@dataclass(frozen=True)
class Window:
    """What an archive holds: the first bucket's start and the last bucket's end (Unix seconds)."""

    start: int
    end: int


def window(segments: list[Segment], granularity: int) -> Window | None:
    if not segments:
        return None
    return Window(min(s.bucket for s in segments), max(s.bucket for s in segments) + granularity)


def select(segments: list[Segment], granularity: int, start: float | None, end: float | None) -> list[Segment]:
    """The ``segments`` whose bucket overlaps ``[start, end)`` (None: unbounded), in replay order."""
    return sorted(s for s in segments
                  if (start is None or s.bucket + granularity > start) and (end is None or s.bucket < end))


def read_lines(segment: Segment) -> Iterator[bytes]:
    """The complete lines (without their newline) of ``segment``, in order."""
    if not segment.sealed:
        try:
            f = open(segment.path, "rb", buffering=1 << 20)
        except FileNotFoundError:  # sealed since it was listed
            yield from read_lines(segment.with_state(True))
            return
        with f:
            for line in f:
                if line.endswith(b"\n"):  # the last line may be an append in progress
                    yield line[:-1]
        return
    with open(segment.path, "rb") as raw:
        stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw), 1 << 20)
        for line in stream:
            if line.endswith(b"\n"):
                yield line[:-1]


def segments_of(directory: Path) -> list[Segment]:
    """Every segment of the archive ``directory`` in replay order (see :func:`~.layout.list_segments`)."""
    return list_segments(directory)
