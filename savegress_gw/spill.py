"""Spill to disk: a bounded FIFO of frames in segment files under ``buffer.overflow.path``.

The source process appends frames here instead of holding them in memory when backpressure
strategy ``buffer`` is engaged (or the buffer is full with overflow policy ``buffer``), and feeds
them back into the worker rings, in order, as room frees up. Spilling is not what makes delivery
safe (the source position is committed only after delivery, so a source replays whatever was
spilled and not delivered); it lets the source keep reading through a burst without holding the
burst in memory.

Files: ``spill-<n:08d>.seg``, each at most :data:`SEGMENT_BYTES`; a record is
``[u32 body length][u32 crc32 of the body]`` then the body ``[u8 flags][u16 lane][u32 events][payload]``
(little-endian), the payload
lz4-compressed when flag 1 is set. A fully consumed segment is deleted. After a crash the
remaining records are read back (a torn tail is truncated with a warning, a corrupt record ends
its segment with an error); nothing there makes :meth:`SpillQueue.open` raise.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lz4.frame

SEGMENT_BYTES = 64 * 1024 * 1024
_PREFIX = struct.Struct("<II")  # body length, crc32 of the body
_META = struct.Struct("<BHI")  # flags, lane, events: the start of the body
_COMPRESSED = 1
_NAME = re.compile(r"spill-(\d{8,})\.seg")


class SpillFull(Exception):
    """The record would take the spill over ``max_size``."""


@dataclass(frozen=True, slots=True)
class SpilledFrame:
    lane: int
    events: int
    payload: bytes


@dataclass
class _Segment:
    number: int
    path: Path
    size: int


class SpillQueue:
    """Append at the tail, pop at the head; one process (the source process) uses it."""

    def __init__(self, directory: str | Path, max_bytes: int, compress: bool, log: Any) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.compress = compress
        self.log = log
        self.segment_bytes = max(64 * 1024, min(SEGMENT_BYTES, max_bytes // 4))
        self._segments: deque[_Segment] = deque()
        self._read_offset = 0
        self._reader: Any = None
        self._writer: Any = None
        self.records = 0
        """Records waiting in the spill."""
        self.events = 0
        """Events in those records."""

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> int:
        """Create the directory or recover what a previous run left; return the records recovered."""
        self.directory.mkdir(parents=True, exist_ok=True)
        numbers = sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name)))
        for number in numbers:
            path = self.directory / f"spill-{number:08d}.seg"
            valid, count, events = self._scan(path, last=number == numbers[-1])
            if valid:
                self._segments.append(_Segment(number, path, valid))
                self.records += count
                self.events += events
            else:
                path.unlink()
        if self.records:
            self.log.warning("recovered frames spilled by a previous run; they are delivered again "
                             "(at least once)", records=self.records, directory=str(self.directory))
        return self.records

    def _scan(self, path: Path, last: bool) -> tuple[int, int, int]:
        """Bytes of whole, CRC-valid records at the start of ``path``, how many, and their events."""
        data = path.read_bytes()
        offset = count = events = 0
        while offset + _PREFIX.size <= len(data):
            length, crc = _PREFIX.unpack_from(data, offset)
            end = offset + _PREFIX.size + length
            if end > len(data) or length < _META.size or zlib.crc32(data[offset + _PREFIX.size:end]) != crc:
                break
            offset, count = end, count + 1
            events += _META.unpack_from(data, offset - length)[2]
        if offset < len(data):
            if last:
                self.log.warning("spill segment has a torn tail (a crash mid-write); truncating it",
                                 file=str(path), at=offset, dropped_bytes=len(data) - offset)
            else:
                self.log.error("corrupt record in spill segment; the rest of the segment is skipped",
                               file=str(path), at=offset)
            with open(path, "r+b") as handle:
                handle.truncate(offset)
        return offset, count, events

    def close(self) -> None:
        for handle in (self._reader, self._writer):
            if handle is not None:
                handle.close()
        self._reader = self._writer = None

    # ------------------------------------------------------------------ queue

    @property
    def bytes(self) -> int:
        """Bytes on disk not yet popped."""
        return self.disk_bytes - self._read_offset

    @property
    def disk_bytes(self) -> int:
        """Bytes the segment files take, the already popped part of the head segment included."""
        return sum(s.size for s in self._segments)

    def __bool__(self) -> bool:
        return self.records > 0

    def append(self, frame: SpilledFrame) -> None:
        """Add ``frame`` at the tail; raise :class:`SpillFull` past ``max_bytes`` (nothing written)."""
        payload, flags = frame.payload, 0
        if self.compress:
            payload, flags = lz4.frame.compress(payload), _COMPRESSED
        body = _META.pack(flags, frame.lane, frame.events) + payload
        record = _PREFIX.pack(len(body), zlib.crc32(body)) + body
        if self.disk_bytes + len(record) > self.max_bytes:  # what the directory holds, not what waits
            raise SpillFull
        tail = self._segments[-1] if self._segments else None
        if tail is None or tail.size + len(record) > self.segment_bytes and tail.size:
            tail = self._new_segment()
        if self._writer is None or self._writer.name != str(tail.path):
            if self._writer is not None:
                self._writer.close()
            self._writer = open(tail.path, "ab")  # noqa: SIM115 - kept open across appends
        self._writer.write(record)
        self._writer.flush()
        tail.size += len(record)
        self.records += 1
        self.events += frame.events

    def _new_segment(self) -> _Segment:
        number = self._segments[-1].number + 1 if self._segments else 1
        segment = _Segment(number, self.directory / f"spill-{number:08d}.seg", 0)
        segment.path.touch()
        self._segments.append(segment)
        return segment

    def pop(self) -> SpilledFrame | None:
        """The frame at the head, removed from the spill; None when it is empty."""
        while self._segments:
            head = self._segments[0]
            if self._read_offset < head.size:
                return self._read_record(head)
            if len(self._segments) == 1:
                return None
            self._drop_head()
        return None

    def _read_record(self, head: _Segment) -> SpilledFrame:
        if self._reader is None or self._reader.name != str(head.path):
            if self._reader is not None:
                self._reader.close()
            self._reader = open(head.path, "rb")  # noqa: SIM115 - kept open across pops
        self._reader.seek(self._read_offset)
        length, _ = _PREFIX.unpack(self._reader.read(_PREFIX.size))
        body = self._reader.read(length)
        flags, lane, events = _META.unpack_from(body)
        payload = body[_META.size:]
        self._read_offset += _PREFIX.size + length
        self.records -= 1
        self.events -= events
        if flags & _COMPRESSED:
            payload = lz4.frame.decompress(payload)
        if self._read_offset >= head.size and len(self._segments) > 1:
            self._drop_head()
        return SpilledFrame(lane, events, payload)

    def _drop_head(self) -> None:
        head = self._segments.popleft()
        if self._reader is not None and self._reader.name == str(head.path):
            self._reader.close()
            self._reader = None
        head.path.unlink(missing_ok=True)
        self._read_offset = 0
