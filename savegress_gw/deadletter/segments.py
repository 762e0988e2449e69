"""Segment and tombstone files of a dead-letter directory: scanning with CRC checks, and the lock.

Layout: ``<base_dir>/dlq-<n:08d>.seg`` segment files, numbered from 1 and never reused, plus
``dlq-<n:08d>.del`` tombstones beside a segment whose entries were removed or evicted, and
``.lock``. Every change holds an exclusive ``flock`` on ``.lock`` (:func:`locked`); readers take
no lock. A tombstone file is an append-only array of u64 record offsets.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from savegress_gw.durable import fsync_directory
from savegress_gw.deadletter.records import HEADER, MAGIC, MAGIC_BYTES, segment_name

_OFFSET = struct.Struct("<Q")
_SEGMENT_FILE = re.compile(r"dlq-(\d{8,})\.(seg|del)")
_CHUNK = 1 << 20


def segment_path(directory: Path, number: int) -> Path:
    """The ``.seg`` file of segment ``number`` in ``directory`` (its tombstones: ``.del`` beside it)."""
    return directory / f"{segment_name(number)}.seg"


def tombstone_path(segment: Path) -> Path:
    """The ``.del`` file beside the segment file ``segment``."""
    return segment.with_suffix(".del")


class Window:
    """Positional reads of one file up to ``end``, through a 1 MiB read-ahead buffer."""

    def __init__(self, fd: int, end: int) -> None:
        self.fd, self.end = fd, end
        self._start, self._data = 0, b""

    def get(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer when ``end`` comes first)."""
        stop = min(offset + length, self.end)
        if stop <= offset:
            return b""
        if not (self._start <= offset and stop <= self._start + len(self._data)):
            self._start = offset
            self._data = os.pread(self.fd, max(stop - offset, min(_CHUNK, self.end - offset)), offset)
        return self._data[offset - self._start: stop - self._start]


def body_at(window: Window, offset: int) -> bytes | None:
    """The body of the whole, CRC-valid record at ``offset``, or None."""
    header = window.get(offset, HEADER.size)
    if len(header) < HEADER.size:
        return None
    magic, length, crc = HEADER.unpack(header)
    if magic != MAGIC or offset + HEADER.size + length > window.end:
        return None
    body = window.get(offset + HEADER.size, length)
    return body if zlib.crc32(body) == crc else None


def _resync(fd: int, start: int, end: int) -> int | None:
    """Offset of the first valid record at or after ``start``, or None."""
    probe = Window(fd, end)
    position = start
    while position < end:
        chunk = os.pread(fd, min(_CHUNK + len(MAGIC_BYTES) - 1, end - position), position)
        found = chunk.find(MAGIC_BYTES)
        while found >= 0:
            if body_at(probe, position + found) is not None:
                return position + found
            found = chunk.find(MAGIC_BYTES, found + 1)
        position += _CHUNK
    return None


@dataclass(frozen=True, slots=True)
class Item:
    """One stretch of a segment: a record (with its body), a corrupt stretch followed by a valid
    record, or a tail (from ``offset`` to the end, no valid record in it)."""

    kind: str
    offset: int
    end: int
    body: bytes = b""


RECORD, CORRUPT, TAIL = "record", "corrupt", "tail"


def scan(fd: int, start: int, end: int) -> Iterator[Item]:
    """The records of ``fd`` from ``start`` (a record boundary) to ``end``, re-synchronizing on
    the next valid record after a corrupt one."""
    window = Window(fd, end)
    offset = start
    while offset < end:
        body = body_at(window, offset)
        if body is not None:
            following = offset + HEADER.size + len(body)
            yield Item(RECORD, offset, following, body)
            offset = following
            continue
        resume = _resync(fd, offset + 1, end)
        if resume is None:
            yield Item(TAIL, offset, end)
            return
        yield Item(CORRUPT, offset, resume)
        offset = resume


def list_segments(directory: Path) -> tuple[set[int], set[int]]:
    """Numbers of the ``.seg`` files in ``directory``, and of ``.del`` files without one."""
    segments: set[int] = set()
    tombstones: set[int] = set()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return segments, tombstones
    for entry in entries:
        match = _SEGMENT_FILE.fullmatch(entry.name)
        if match:
            (segments if match[2] == "seg" else tombstones).add(int(match[1]))
    return segments, tombstones - segments


def load_tombstones(path: Path, start: int = 0) -> tuple[set[int], int]:
    """Offsets in the ``.del`` file ``path`` from byte ``start``, and the byte count read up to
    (whole entries only: a torn last entry is ignored)."""
    try:
        with open(path, "rb") as file:
            file.seek(start)
            data = file.read()
    except FileNotFoundError:
        return set(), start
    whole = len(data) - len(data) % _OFFSET.size
    return {offset for (offset,) in _OFFSET.iter_unpack(data[:whole])}, start + whole


def append_tombstones(path: Path, offsets: Iterable[int]) -> None:
    """Durably append ``offsets`` to the ``.del`` file ``path`` (created, with a directory fsync,
    if missing), first cutting off a torn last entry left by a crashed remover."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size % _OFFSET.size:
            os.ftruncate(fd, size - size % _OFFSET.size)
        write_all(fd, b"".join(_OFFSET.pack(o) for o in offsets))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_directory(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (retrying short writes)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the directory's exclusive lock (``.lock``)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
