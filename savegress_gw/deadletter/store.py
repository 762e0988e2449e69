"""Reading and removing the entries of a file dead-letter directory (CLI, replay)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog
from structlog.typing import FilteringBoundLogger

from savegress_gw.deadletter.records import HEADER, DeadLetter, decode_record, parse_entry_id, segment_name
from savegress_gw.deadletter.segments import (
    CORRUPT,
    RECORD,
    TAIL,
    Window,
    body_at,
    list_segments,
    load_tombstones,
    locked,
    scan,
    segment_path,
    tombstone_path,
)
from savegress_gw.deadletter.view import LogView, Segment


class DeadLetterStore:
    """Reads and removes the entries of a file dead-letter directory, beside running writers.

    ``entries()`` and ``get()`` take no lock; ``remove()`` and ``purge()`` take the directory
    lock, and what they remove is gone for good (tombstones are fsynced before they return).
    Corrupt records are skipped, logged once and counted in :attr:`corrupt`.
    """

    def __init__(self, base_dir: str | Path, log: FilteringBoundLogger | None = None) -> None:
        self.directory = Path(base_dir)
        self._log = log or structlog.get_logger().bind(dlq=str(self.directory))
        self._segments = LogView(self.directory, self._log)

    @property
    def corrupt(self) -> int:
        return self._segments.corrupt

    @property
    def location(self) -> str:
        return str(self.directory)

    def entries(self, ids: Iterable[str] | None = None) -> Iterator[DeadLetter]:
        """Live entries in parking order, as of this call (entries parked later are not included).

        With ``ids``: those entries, in parking order; unknown or removed ones are logged and
        skipped. Raises ValueError for a string that is not an entry id.
        """
        numbers, _ = list_segments(self.directory)
        if ids is not None:
            return self._selected(sorted({parse_entry_id(i) for i in ids}), numbers)
        sizes: dict[int, int] = {}
        for number in sorted(numbers):
            try:
                sizes[number] = segment_path(self.directory, number).stat().st_size
            except FileNotFoundError:
                continue
        return self._all(sizes, newest=max(numbers, default=0))

    def _all(self, sizes: dict[int, int], newest: int) -> Iterator[DeadLetter]:
        for number, size in sizes.items():
            path = segment_path(self.directory, number)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # evicted or emptied meanwhile
            try:
                removed, _ = load_tombstones(tombstone_path(path))
                for item in scan(fd, 0, size):
                    if item.kind == RECORD and item.offset not in removed:
                        entry = self._entry(path, item.offset, item.body)
                        if entry is not None:
                            yield entry
                    elif item.kind == CORRUPT or (item.kind == TAIL and number != newest):
                        self._segments.report_corrupt(path, item.offset, item.end - item.offset)
            finally:
                os.close(fd)

    def _selected(self, locations: list[tuple[int, int]], numbers: set[int]) -> Iterator[DeadLetter]:
        for number, offset in locations:
            entry = self._read(number, offset) if number in numbers else None
            if entry is None:
                self._log.warning("dead-letter entry not found (removed, replayed or evicted)",
                                  id=f"{segment_name(number)}:{offset}")
            else:
                yield entry

    def get(self, entry_id: str) -> DeadLetter:
        """The live entry ``entry_id``; KeyError when there is none, ValueError for a malformed id."""
        entry = self._read(*parse_entry_id(entry_id))
        if entry is None:
            raise KeyError(entry_id)
        return entry

    def _read(self, number: int, offset: int) -> DeadLetter | None:
        path = segment_path(self.directory, number)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            body = body_at(Window(fd, os.fstat(fd).st_size), offset)
        finally:
            os.close(fd)
        if body is None or offset in load_tombstones(tombstone_path(path))[0]:
            return None
        return self._entry(path, offset, body)

    def _entry(self, path: Path, offset: int, body: bytes) -> DeadLetter | None:
        record = decode_record(body)
        if record is not None:
            try:
                return DeadLetter.from_record(f"{path.stem}:{offset}", record)
            except KeyError:
                pass
        self._segments.report_corrupt(path, offset, HEADER.size + len(body))
        return None

    def remove(self, ids: Iterable[str]) -> int:
        """Durably remove the entries ``ids`` (unknown or already removed ones are ignored);
        return how many were removed. Segments left empty, other than the newest, are deleted."""
        by_segment: dict[int, set[int]] = {}
        for number, offset in map(parse_entry_id, ids):
            by_segment.setdefault(number, set()).add(offset)
        if not by_segment or not self.directory.is_dir():
            return 0
        removed = 0
        with locked(self.directory):
            self._segments.refresh(repair=False, only=by_segment)
            for number, offsets in sorted(by_segment.items()):
                segment = self._segments.segments.get(number)
                if segment is not None:
                    victims = self._valid(segment, sorted(offsets - segment.tombstones))
                    self._segments.tombstone(segment, victims)
                    removed += len(victims)
                    self._segments.delete_if_empty(segment)
        return removed

    @staticmethod
    def _valid(segment: Segment, offsets: list[int]) -> list[int]:
        """The ``offsets`` at which a whole record of ``segment`` starts."""
        fd = os.open(segment.path, os.O_RDONLY)
        try:
            window = Window(fd, segment.scanned)
            return [o for o in offsets if body_at(window, o) is not None]
        finally:
            os.close(fd)

    def purge(self, older_than_seconds: float) -> int:
        """Remove every entry parked more than ``older_than_seconds`` ago; return how many."""
        cutoff = time.time_ns() // 1_000_000 - int(older_than_seconds * 1000)
        return self.remove([e.id for e in self.entries() if e.parked_ms < cutoff])

    def count(self) -> int:
        """Live entries right now."""
        if not self.directory.is_dir():
            return 0
        with locked(self.directory):
            self._segments.refresh(repair=False)
            return self._segments.live
