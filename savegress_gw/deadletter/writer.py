"""Appending parked events to a dead-letter directory, and its retention and ``max_messages`` limits.

Costs: :meth:`DeadLetterWriter.open` reads every segment once to check it (workers do that in
parallel, outside the lock, and only catch up under it). Each append re-lists the directory and
reads what other processes appended since its last append. Appending is serialized across
processes (one fsync at a time), which only the failure path pays.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from savegress_gw.components import Batch
from savegress_gw.deadletter.records import encode_batch, parked_ms
from savegress_gw.deadletter.segments import RECORD, locked, scan, write_all
from savegress_gw.deadletter.view import LogView, Segment
from savegress_gw.envelope import format_timestamp

_DAY_MS = 86_400_000


class DeadLetterWriter:
    """Appends records to the segment files under ``base_dir``, beside other writers and readers.

    :meth:`append` writes one record per event with a single write and returns only after
    ``fsync`` (plus a directory fsync when it started a segment); it raises ``OSError`` when it
    cannot, after cutting off whatever it wrote. A batch that would take the active segment past
    ``segment_size`` starts the next segment (a larger batch still goes in whole).

    :meth:`open` checks every segment: a torn tail of the newest one (an append that crashed
    midway) is cut off with a warning; a corrupt record elsewhere is skipped, logged with its file
    and offset and counted in :attr:`corrupt`. Nothing found on disk makes ``open`` raise.

    Retention, after every append (and on open): records parked more than ``retention_days`` ago
    (0: no age limit), and beyond ``max_messages`` live records (over all processes) the oldest
    ones, are evicted: whole segments when they qualify entirely, otherwise record by record
    through tombstones. Evictions are logged and counted in :attr:`evicted`. Failing to evict is
    logged, never raised: the events are already parked.
    """

    def __init__(self, base_dir: str | Path, segment_size: int, retention_days: int, max_messages: int) -> None:
        self.directory = Path(base_dir)
        self.segment_size, self.retention_days, self.max_messages = segment_size, retention_days, max_messages
        self.evicted = 0
        """Entries this writer evicted by retention or ``max_messages``."""
        self._fd: int | None = None
        self._fd_number = 0

    @property
    def corrupt(self) -> int:
        """Corrupt records this writer found and skipped."""
        return self._segments.corrupt

    def open(self, log: FilteringBoundLogger) -> None:
        """Create the directory if missing, check and repair its segments, and enforce the limits."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = log
        self._segments = LogView(self.directory, log)
        self._segments.refresh(repair=False)  # the long scan, without holding up other writers
        with locked(self.directory):
            self._segments.refresh(repair=True)
            self._enforce(time.time_ns() // 1_000_000)

    def append(self, batch: Batch, payloads: Sequence[bytes], encodings: Sequence[str], reason: str,
               attempts: int, origin: str) -> None:
        """Durably park every event of ``batch`` (stored as ``payloads`` with ``encodings``, one per
        event) with the failure ``reason``; the parking time is taken under the lock."""
        with locked(self.directory):
            self._segments.refresh(repair=True)
            now_ns = time.time_ns()  # under the lock: parking times rise through the log
            data = encode_batch(batch, payloads, encodings, reason, attempts, origin, format_timestamp(now_ns))
            segment = self._target(len(data))
            self._write(segment, data, len(batch), now_ns // 1_000_000)
            self._enforce(now_ns // 1_000_000)

    def close(self) -> None:
        """Close the open segment file; idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------------ appending (under the lock)

    def _target(self, size: int) -> Segment:
        """The segment that takes ``size`` more bytes: the newest, or a new one after it."""
        newest = self._segments.newest
        if newest is not None and (newest.scanned == 0 or newest.scanned + size <= self.segment_size):
            return newest
        return self._segments.start_segment()

    def _write(self, segment: Segment, data: bytes, records: int, parked: int) -> None:
        if self._fd_number != segment.number or self._fd is None:
            self.close()
            self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
            self._fd_number = segment.number
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, segment.scanned)
            except OSError:
                pass  # the next refresh cuts what is left as a torn tail
            self.close()
            raise
        segment.scanned += len(data)
        segment.records += records
        segment.last_ms = parked
        if segment.head_ms is None:
            segment.head_ms = parked

    # ------------------------------------------------------------------ retention (under the lock)

    def _enforce(self, now_ms: int) -> None:
        days = self.retention_days
        cutoff = now_ms - days * _DAY_MS if days else None
        try:
            before = self.evicted
            for segment in self._segments.ordered():
                self._segments.delete_if_empty(segment)
            self._evict(cutoff)
            if self.evicted > before:
                self._log.warning("evicted dead-letter entries", evicted=self.evicted - before,
                                  retention_days=days, max_messages=self.max_messages)
        except OSError as exc:
            self._log.error("could not evict dead-letter entries; retrying after the next put", error=str(exc))

    def _evict(self, cutoff: int | None) -> None:
        """Evict, oldest first, entries parked before ``cutoff`` and those beyond ``max_messages``."""
        segments = self._segments
        newest = segments.newest
        for segment in segments.ordered():
            excess = segments.live - self.max_messages
            expired = cutoff is not None and segment.last_ms is not None and segment.last_ms < cutoff
            if segment is not newest and (expired or segment.live <= excess):
                self.evicted += segment.live
                segments.delete(segment)
                continue
            aging = cutoff is not None and segment.head_ms is not None and segment.head_ms < cutoff
            if excess > 0 or aging:
                self.evicted += self._evict_front(segment, max(0, excess), cutoff)
            if segment.live:
                return
            if segment is not newest:
                segments.delete(segment)

    def _evict_front(self, segment: Segment, count: int, cutoff: int | None) -> int:
        """Tombstone the first ``count`` live records of ``segment``, and any more parked before
        ``cutoff``; move ``head`` past them. Returns how many were evicted."""
        victims: list[int] = []
        fd = os.open(segment.path, os.O_RDONLY)
        try:
            start = segment.head
            segment.head, segment.head_ms = segment.scanned, None
            for item in scan(fd, start, segment.scanned):
                if item.kind != RECORD or item.offset in segment.tombstones:
                    continue
                if len(victims) < count:
                    victims.append(item.offset)
                    continue
                parked = parked_ms(item.body)
                if cutoff is not None and parked < cutoff:
                    victims.append(item.offset)
                else:
                    segment.head, segment.head_ms = item.offset, parked
                    break
        finally:
            os.close(fd)
        self._segments.tombstone(segment, victims)
        return len(victims)
