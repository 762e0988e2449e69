"""One process's view of a dead-letter directory, and the changes made to it under the lock.

A process keeps a few counters per segment plus the tombstoned offsets of segments not deleted
yet. The newest segment is the active one; it is never deleted, so numbers keep rising. A
segment other than the newest whose every record is tombstoned is deleted (the ``.seg`` first,
so a crash never revives entries).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from savegress_gw.deadletter.records import parked_ms
from savegress_gw.durable import fsync_directory
from savegress_gw.deadletter.segments import (
    CORRUPT,
    RECORD,
    append_tombstones,
    list_segments,
    load_tombstones,
    scan,
    segment_path,
    tombstone_path,
)


@dataclass
class Segment:
    """What this process knows of one segment."""

    number: int
    path: Path
    scanned: int = 0
    """Bytes checked: records start and end within them."""
    records: int = 0
    """CRC-valid records within ``scanned``."""
    last_ms: int | None = None
    """Parking time of the last record."""
    head: int = 0
    """No live record starts before this offset."""
    head_ms: int | None = None
    """Parking time of the first record at or after ``head`` (a lower bound for the live ones)."""
    tombstones: set[int] = field(default_factory=set)
    tombstone_bytes: int = 0

    @property
    def del_path(self) -> Path:
        return tombstone_path(self.path)

    @property
    def live(self) -> int:
        return max(0, self.records - len(self.tombstones))

    def rescan(self) -> None:
        """Forget the scan (the file shrank under us); tombstones stay."""
        self.scanned = self.records = self.head = 0
        self.last_ms = self.head_ms = None

    def read_tombstones(self) -> None:
        """Pick up the tombstones appended since the last load."""
        found, self.tombstone_bytes = load_tombstones(self.del_path, self.tombstone_bytes)
        self.tombstones |= found


class LogView:
    """One process's view of a dead-letter directory; :meth:`refresh` catches up with the others.

    Counts are exact only while the directory lock is held (and after a refresh under it).
    """

    def __init__(self, directory: Path, log: FilteringBoundLogger) -> None:
        self.directory, self.log = directory, log
        self.segments: dict[int, Segment] = {}
        self.newest_number: int | None = None
        """The highest segment number on disk at the last refresh (the active segment)."""
        self.corrupt = 0
        """Corrupt stretches found so far (each counted and logged once per process)."""
        self._reported: set[tuple[str, int]] = set()

    def ordered(self) -> list[Segment]:
        return [self.segments[n] for n in sorted(self.segments)]

    @property
    def newest(self) -> Segment | None:
        return self.segments.get(self.newest_number) if self.newest_number is not None else None

    @property
    def live(self) -> int:
        return sum(s.live for s in self.segments.values())

    def refresh(self, repair: bool, only: Iterable[int] | None = None) -> None:
        """Pick up new segments, records and tombstones; forget deleted segments.

        With ``only``, just those segments are caught up (the others may stay stale). With
        ``repair`` (only under the lock): cut a torn tail off the newest segment, with a warning,
        and delete tombstone files whose segment is gone. Without it, an incomplete last record
        of the newest segment is taken for an append in progress and left alone.
        """
        numbers, orphans = list_segments(self.directory)
        self.newest_number = max(numbers, default=None)
        wanted = numbers if only is None else numbers & set(only)
        for gone in set(self.segments) - numbers:
            del self.segments[gone]
        for number in wanted - set(self.segments):
            self.segments[number] = Segment(number, segment_path(self.directory, number))
        for segment in self.ordered():
            if segment.number in wanted:
                self._catch_up(segment, segment.number == self.newest_number, repair)
        if repair:
            for number in orphans:
                tombstone_path(segment_path(self.directory, number)).unlink(missing_ok=True)

    def _catch_up(self, segment: Segment, newest: bool, repair: bool) -> None:
        try:
            fd = os.open(segment.path, os.O_RDONLY)
        except FileNotFoundError:
            del self.segments[segment.number]
            return
        try:
            size = os.fstat(fd).st_size
            if size < segment.scanned:
                segment.rescan()
            if size > segment.scanned:
                self._scan(segment, fd, size, newest, repair)
        finally:
            os.close(fd)
        segment.read_tombstones()

    def _scan(self, segment: Segment, fd: int, size: int, newest: bool, repair: bool) -> None:
        last: bytes | None = None
        end = size
        for item in scan(fd, segment.scanned, size):
            if item.kind == RECORD:
                segment.records += 1
                if segment.head_ms is None and item.offset >= segment.head:
                    segment.head_ms = parked_ms(item.body)
                last = item.body
            elif item.kind == CORRUPT or not newest:
                self.report_corrupt(segment.path, item.offset, item.end - item.offset)
            else:
                end = item.offset
                if repair:
                    self._cut(segment.path, item.offset, size)
        segment.scanned = end
        if last is not None:
            segment.last_ms = parked_ms(last)

    def _cut(self, path: Path, offset: int, size: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.log.warning("cut an incomplete record off the end of a dead-letter segment (a put that "
                         "crashed midway, never acknowledged)", file=str(path), offset=offset, bytes=size - offset)

    def report_corrupt(self, path: Path, offset: int, length: int) -> None:
        """Count and log a corrupt stretch once per process."""
        if (path.name, offset) in self._reported:
            return
        self._reported.add((path.name, offset))
        self.corrupt += 1
        self.log.error("corrupt dead-letter record skipped", file=str(path), offset=offset, bytes=length)

    # ------------------------------------------------------------------ changes (under the lock)

    def start_segment(self) -> Segment:
        """Create the segment after the newest (durably, with a directory fsync); it becomes the newest."""
        number = (self.newest_number or 0) + 1
        segment = Segment(number, segment_path(self.directory, number))
        os.close(os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        fsync_directory(self.directory)
        self.segments[number] = segment
        self.newest_number = number
        return segment

    def tombstone(self, segment: Segment, offsets: list[int]) -> None:
        """Durably mark ``offsets`` (records of ``segment``, not yet tombstoned) as gone."""
        if not offsets:
            return
        append_tombstones(segment.del_path, offsets)
        segment.read_tombstones()

    def delete(self, segment: Segment) -> None:
        """Delete a segment that is not the newest (its ``.seg`` first, then its tombstones)."""
        segment.path.unlink(missing_ok=True)
        segment.del_path.unlink(missing_ok=True)
        fsync_directory(self.directory)
        del self.segments[segment.number]

    def delete_if_empty(self, segment: Segment) -> None:
        """Delete ``segment`` (caught up under the lock) if it is not the newest and all its
        records are tombstoned."""
        if segment.number != self.newest_number and segment.live == 0:
            self.delete(segment)
