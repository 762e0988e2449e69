"""The file dead-letter queue: parked events in CRC-checked segment files, and the reader API.

``dlq: {type: file, base_dir: ./data/dlq, segment_size: 1GB, retention_days: 14,
max_messages: 5000000, compression: true}`` (``spec/reference.md`` 4.4 and 6.5).

Layout. One log per directory, shared by every process: ``<base_dir>/dlq-<n:08d>.seg`` segment
files, numbered from 1 and never reused, plus ``dlq-<n:08d>.del`` tombstones beside a segment
whose entries were removed or evicted, and ``.lock``. Every change (append, rotation, repair,
tombstone, eviction, deletion) holds an exclusive ``flock`` on ``.lock``, so worker processes, a
``dlq replay`` run and the CLI may all work on one directory at once; readers take no lock. The
price is that parking is serialized across workers (one fsync at a time), which only the failure
path pays. The newest segment is the active one; it is never deleted, so numbers keep rising.

Record format, little-endian: ``[magic u32 0x51444753][length u32][crc32(body) u32][body]``;
the body is a msgpack map ``{id, key, table, schema, operation, payload, encoding, reason,
error_class, attempts, first_failed_at, last_failed_at, origin, timestamp_ms}``: ``payload``
is the event's JSON envelope (bytes, compressed when ``encoding`` is not ``identity``),
``timestamp_ms`` the event time, ``first_failed_at``/``last_failed_at`` ISO 8601 UTC. A put only
sees the last failed attempt, so both are the time of the put (the parking time). An entry's
stable id is ``<segment>:<offset>``, e.g. ``dlq-00000003:4096``.

Tombstones: a ``.del`` file is an append-only array of u64 record offsets, fsynced before a
removal returns; a segment other than the newest whose every record is tombstoned is deleted
(the ``.seg`` first, so a crash never revives entries).

Costs: ``open`` reads every segment once to check it (workers do that in parallel, outside the
lock, and only catch up under it). Each put re-lists the directory and reads what other
processes appended since its last put. A process keeps a few counters per segment plus the
tombstoned offsets of segments not deleted yet.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import msgpack
import orjson
import structlog
from pydantic import Field
from structlog.typing import FilteringBoundLogger

from savegress_gw import Batch, Component, ComponentConfig, Compressor, Context, DeadLetterQueue, hookimpl
from savegress_gw.compression import decompress
from savegress_gw.envelope import format_timestamp, timestamp_ms
from savegress_gw.units import Size

MAGIC = 0x51444753
"""First four bytes of every record (``SGDQ`` read as little-endian bytes)."""
HEADER = struct.Struct("<III")
"""magic, body length, crc32 of the body."""
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_OFFSET = struct.Struct("<Q")
_SEGMENT_FILE = re.compile(r"dlq-(\d{8,})\.(seg|del)")
_ENTRY_ID = re.compile(r"(dlq-\d{8,}):(\d+)")
_CHUNK = 1 << 20
_DAY_MS = 86_400_000

_ERROR_CLASS = re.compile(
    r"(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Timeout|Exceeded|Refused|Failure)"  # exception names
    r"|_?[A-Z][A-Z0-9_]{2,}"  # error codes: MSG_SIZE_TOO_LARGE, _MSG_TIMED_OUT
    r"|(?:HTTP ?)?[1-5]\d\d"  # HTTP status codes
)


def error_class(reason: str) -> str:
    """The part of ``reason`` before ``:`` when it looks like an exception name, error code or
    HTTP status (``KafkaException``, ``MSG_SIZE_TOO_LARGE``, ``HTTP 400``), else ``""``."""
    head, colon, _ = reason.partition(":")
    head = head.strip()
    return head if colon and _ERROR_CLASS.fullmatch(head) else ""


def segment_name(number: int) -> str:
    """``dlq-00000007``: the file stem of segment ``number``, and the first half of its entry ids."""
    return f"dlq-{number:08d}"


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    """``(segment number, offset)`` of an entry id; ValueError when it is not one."""
    match = _ENTRY_ID.fullmatch(entry_id)
    if match is None:
        raise ValueError(f"{entry_id!r} is not a dead-letter entry id (expected dlq-<segment>:<offset>)")
    return int(match[1][4:]), int(match[2])


def encode_record(body: dict[str, Any]) -> bytes:
    """One framed record: header + msgpack ``body``."""
    packed = msgpack.packb(body, use_bin_type=True)
    return HEADER.pack(MAGIC, len(packed), zlib.crc32(packed)) + packed


# ---------------------------------------------------------------------------------------------
# Reading segments


class _Window:
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


def _body_at(window: _Window, offset: int) -> bytes | None:
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
    probe = _Window(fd, end)
    position = start
    while position < end:
        chunk = os.pread(fd, min(_CHUNK + len(_MAGIC_BYTES) - 1, end - position), position)
        found = chunk.find(_MAGIC_BYTES)
        while found >= 0:
            if _body_at(probe, position + found) is not None:
                return position + found
            found = chunk.find(_MAGIC_BYTES, found + 1)
        position += _CHUNK
    return None


@dataclass(frozen=True, slots=True)
class _Item:
    """One stretch of a segment: a record (with its body), a corrupt stretch followed by a valid
    record, or a tail (from ``offset`` to the end, no valid record in it)."""

    kind: str
    offset: int
    end: int
    body: bytes = b""


RECORD, CORRUPT, TAIL = "record", "corrupt", "tail"


def _scan(fd: int, start: int, end: int) -> Iterator[_Item]:
    """The records of ``fd`` from ``start`` (a record boundary) to ``end``, re-synchronizing on
    the next valid record after a corrupt one."""
    window = _Window(fd, end)
    offset = start
    while offset < end:
        body = _body_at(window, offset)
        if body is not None:
            following = offset + HEADER.size + len(body)
            yield _Item(RECORD, offset, following, body)
            offset = following
            continue
        resume = _resync(fd, offset + 1, end)
        if resume is None:
            yield _Item(TAIL, offset, end)
            return
        yield _Item(CORRUPT, offset, resume)
        offset = resume


def _decode(body: bytes) -> dict[str, Any] | None:
    """The record map of a CRC-valid ``body``, or None if it is not one."""
    try:
        record = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("payload"), bytes) else None


def _parked_ms(body: bytes) -> int:
    """When the record was parked (``last_failed_at``), Unix ms; 0 when unreadable (evicted first)."""
    record = _decode(body)
    try:
        return timestamp_ms(record["last_failed_at"]) if record else 0
    except (KeyError, TypeError, ValueError):
        return 0


def _list_segments(directory: Path) -> tuple[set[int], set[int]]:
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


def _load_tombstones(path: Path, start: int = 0) -> tuple[set[int], int]:
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


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the directory's exclusive lock (``.lock``)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------------
# The log as one process sees it


@dataclass
class _Segment:
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
        return self.path.with_suffix(".del")

    @property
    def live(self) -> int:
        return max(0, self.records - len(self.tombstones))

    def rescan(self) -> None:
        """Forget the scan (the file shrank under us); tombstones stay."""
        self.scanned = self.records = self.head = 0
        self.last_ms = self.head_ms = None


class _Log:
    """One process's view of a dead-letter directory; :meth:`refresh` catches up with the others.

    Counts are exact only while the directory lock is held (and after a refresh under it).
    """

    def __init__(self, directory: Path, log: FilteringBoundLogger) -> None:
        self.directory, self.log = directory, log
        self.segments: dict[int, _Segment] = {}
        self.newest_number: int | None = None
        """The highest segment number on disk at the last refresh (the active segment)."""
        self.corrupt = 0
        """Corrupt stretches found so far (each counted and logged once per process)."""
        self._reported: set[tuple[str, int]] = set()

    def ordered(self) -> list[_Segment]:
        return [self.segments[n] for n in sorted(self.segments)]

    @property
    def newest(self) -> _Segment | None:
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
        numbers, orphans = _list_segments(self.directory)
        self.newest_number = max(numbers, default=None)
        wanted = numbers if only is None else numbers & set(only)
        for gone in set(self.segments) - numbers:
            del self.segments[gone]
        for number in wanted - set(self.segments):
            self.segments[number] = _Segment(number, self.directory / f"{segment_name(number)}.seg")
        for segment in self.ordered():
            if segment.number in wanted:
                self._catch_up(segment, segment.number == self.newest_number, repair)
        if repair:
            for number in orphans:
                (self.directory / f"{segment_name(number)}.del").unlink(missing_ok=True)

    def _catch_up(self, segment: _Segment, newest: bool, repair: bool) -> None:
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
        found, segment.tombstone_bytes = _load_tombstones(segment.del_path, segment.tombstone_bytes)
        segment.tombstones |= found

    def _scan(self, segment: _Segment, fd: int, size: int, newest: bool, repair: bool) -> None:
        last: bytes | None = None
        end = size
        for item in _scan(fd, segment.scanned, size):
            if item.kind == RECORD:
                segment.records += 1
                if segment.head_ms is None and item.offset >= segment.head:
                    segment.head_ms = _parked_ms(item.body)
                last = item.body
            elif item.kind == CORRUPT or not newest:
                self.report_corrupt(segment.path, item.offset, item.end - item.offset)
            else:
                end = item.offset
                if repair:
                    self._cut(segment.path, item.offset, size)
        segment.scanned = end
        if last is not None:
            segment.last_ms = _parked_ms(last)

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

    def tombstone(self, segment: _Segment, offsets: list[int]) -> None:
        """Durably mark ``offsets`` (records of ``segment``, not yet tombstoned) as gone."""
        if not offsets:
            return
        created = not segment.del_path.exists()
        fd = os.open(segment.del_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size % _OFFSET.size:  # a torn entry of a crashed remover
                os.ftruncate(fd, size - size % _OFFSET.size)
            _write_all(fd, b"".join(_OFFSET.pack(o) for o in offsets))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self.directory)
        found, segment.tombstone_bytes = _load_tombstones(segment.del_path, segment.tombstone_bytes)
        segment.tombstones |= found

    def delete(self, segment: _Segment) -> None:
        """Delete a segment that is not the newest (its ``.seg`` first, then its tombstones)."""
        segment.path.unlink(missing_ok=True)
        segment.del_path.unlink(missing_ok=True)
        _fsync_directory(self.directory)
        del self.segments[segment.number]

    def delete_if_empty(self, segment: _Segment) -> None:
        """Delete ``segment`` (caught up under the lock) if it is not the newest and all its
        records are tombstoned."""
        if segment.number != self.newest_number and segment.live == 0:
            self.delete(segment)


# ---------------------------------------------------------------------------------------------
# The component


class FileDeadLetterQueue(DeadLetterQueue):
    """Parks events in segment files under ``base_dir`` (layout and format: the module docstring).

    ``put`` appends one record per event with a single write and returns only after ``fsync``
    (plus a directory fsync when it started a segment); it raises ``OSError`` when it cannot,
    after cutting off whatever it wrote. A batch that would take the active segment past
    ``segment_size`` starts the next segment (a larger batch still goes in whole).

    ``open`` checks every segment: a torn tail of the newest one (a put that crashed midway) is
    cut off with a warning; a corrupt record elsewhere is skipped, logged with its file and offset
    and counted in ``corrupt``. Nothing found on disk makes ``open`` raise.

    Retention, after every put (and on open): records parked more than ``retention_days`` ago,
    and beyond ``max_messages`` live records (over all processes) the oldest ones, are evicted:
    whole segments when they qualify entirely, otherwise record by record through tombstones.
    Evictions are logged and counted in ``evicted``. Failing to evict is logged, never raised:
    the events are already parked.
    """

    name = "file"

    class Config(ComponentConfig):
        base_dir: str = "./data/dlq"
        """Directory of the segment files; created if missing; may be shared by every worker."""
        segment_size: Size = Field(1024**3, ge=1)
        """Size at which the active segment is closed and the next one started."""
        retention_days: int = Field(14, ge=0)
        """Entries parked longer ago than this are evicted; 0 keeps them regardless of age."""
        max_messages: int = Field(5_000_000, ge=1)
        """Most entries kept; beyond it the oldest are evicted."""
        compression: bool = True
        """Compress each entry's payload with the profile's compressor (the encoding is stored per entry)."""

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.evicted = 0
        """Entries this instance evicted by retention or ``max_messages``."""
        self._fd: int | None = None
        self._fd_number = 0

    @property
    def corrupt(self) -> int:
        """Corrupt records this instance found and skipped."""
        return self._segments.corrupt

    def open(self, context: Context) -> None:
        self._dir = Path(self.config.base_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._log: FilteringBoundLogger = context.log.bind(dlq=str(self._dir))
        self._compressor: Compressor | None = context.compressor if self.config.compression else None
        self._segments = _Log(self._dir, self._log)
        self._segments.refresh(repair=False)  # the long scan, without holding up other workers
        with _locked(self._dir):
            self._segments.refresh(repair=True)
            self._enforce(time.time_ns() // 1_000_000)

    def put(self, batch: Batch, reason: str, attempts: int, origin: str) -> None:
        if not len(batch):
            return
        payloads, encodings = batch.payloads, ["identity"] * len(batch)
        if self._compressor is not None:
            compressed = [self._compressor.compress(p) for p in batch.payloads]
            payloads, encodings = [c.data for c in compressed], [c.encoding for c in compressed]
        kind = error_class(reason)
        with _locked(self._dir):
            self._segments.refresh(repair=True)
            now_ns = time.time_ns()  # under the lock: parking times rise through the log
            parked = format_timestamp(now_ns)
            data = b"".join(encode_record({
                "id": batch.ids[i], "key": batch.keys[i], "table": batch.tables[i], "schema": batch.schemas[i],
                "operation": batch.operations[i], "payload": payloads[i], "encoding": encodings[i],
                "reason": reason, "error_class": kind, "attempts": attempts,
                "first_failed_at": parked, "last_failed_at": parked, "origin": origin,
                "timestamp_ms": batch.timestamps_ms[i],
            }) for i in range(len(batch)))
            segment = self._target(len(data))
            self._append(segment, data, len(batch), now_ns // 1_000_000)
            self._enforce(now_ns // 1_000_000)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------------ appending (under the lock)

    def _target(self, size: int) -> _Segment:
        """The segment that takes ``size`` more bytes: the newest, or a new one after it."""
        newest = self._segments.newest
        if newest is not None and (newest.scanned == 0 or newest.scanned + size <= self.config.segment_size):
            return newest
        number = (self._segments.newest_number or 0) + 1
        segment = _Segment(number, self._dir / f"{segment_name(number)}.seg")
        os.close(os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        _fsync_directory(self._dir)
        self._segments.segments[number] = segment
        self._segments.newest_number = number
        return segment

    def _append(self, segment: _Segment, data: bytes, records: int, parked_ms: int) -> None:
        if self._fd_number != segment.number or self._fd is None:
            self.close()
            self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
            self._fd_number = segment.number
        try:
            _write_all(self._fd, data)
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
        segment.last_ms = parked_ms
        if segment.head_ms is None:
            segment.head_ms = parked_ms

    # ------------------------------------------------------------------ retention (under the lock)

    def _enforce(self, now_ms: int) -> None:
        days = self.config.retention_days
        cutoff = now_ms - days * _DAY_MS if days else None
        try:
            before = self.evicted
            for segment in self._segments.ordered():
                self._segments.delete_if_empty(segment)
            self._evict(cutoff)
            if self.evicted > before:
                self._log.warning("evicted dead-letter entries", evicted=self.evicted - before,
                                  retention_days=days, max_messages=self.config.max_messages)
        except OSError as exc:
            self._log.error("could not evict dead-letter entries; retrying after the next put", error=str(exc))

    def _evict(self, cutoff: int | None) -> None:
        """Evict, oldest first, entries parked before ``cutoff`` and those beyond ``max_messages``."""
        segments = self._segments
        newest = segments.newest
        for segment in segments.ordered():
            excess = segments.live - self.config.max_messages
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

    def _evict_front(self, segment: _Segment, count: int, cutoff: int | None) -> int:
        """Tombstone the first ``count`` live records of ``segment``, and any more parked before
        ``cutoff``; move ``head`` past them. Returns how many were evicted."""
        victims: list[int] = []
        fd = os.open(segment.path, os.O_RDONLY)
        try:
            start = segment.head
            segment.head, segment.head_ms = segment.scanned, None
            for item in _scan(fd, start, segment.scanned):
                if item.kind != RECORD or item.offset in segment.tombstones:
                    continue
                if len(victims) < count:
                    victims.append(item.offset)
                    continue
                parked = _parked_ms(item.body)
                if cutoff is not None and parked < cutoff:
                    victims.append(item.offset)
                else:
                    segment.head, segment.head_ms = item.offset, parked
                    break
        finally:
            os.close(fd)
        self._segments.tombstone(segment, victims)
        return len(victims)


# ---------------------------------------------------------------------------------------------
# Reading and removing entries (CLI, replay)


@dataclass(frozen=True)
class DeadLetter:
    """One parked event, as stored (``payload`` decompressed on first access)."""

    id: str
    """Entry id, ``<segment>:<offset>``."""
    event_id: str
    key: str
    table: str
    schema: str
    operation: str
    stored: bytes = field(repr=False)
    """The payload as stored (compressed unless ``encoding`` is ``identity``)."""
    encoding: str
    reason: str
    error_class: str
    attempts: int
    first_failed_at: str
    last_failed_at: str
    origin: str
    timestamp_ms: int

    @classmethod
    def from_record(cls, entry_id: str, record: dict[str, Any]) -> "DeadLetter":
        return cls(entry_id, record["id"], record["key"], record["table"], record["schema"], record["operation"],
                   record["payload"], record["encoding"], record["reason"], record["error_class"], record["attempts"],
                   record["first_failed_at"], record["last_failed_at"], record["origin"], record["timestamp_ms"])

    @cached_property
    def payload(self) -> bytes:
        """The event's JSON envelope; ValueError when the stored bytes do not decompress."""
        return decompress(self.stored, self.encoding)

    @property
    def parked_ms(self) -> int:
        """When the entry was parked (``last_failed_at``), Unix milliseconds."""
        return timestamp_ms(self.last_failed_at)

    def to_dict(self) -> dict[str, Any]:
        """Every field, with the event as parsed JSON under ``event`` (for ``dlq show``)."""
        try:
            event: Any = orjson.loads(self.payload)
        except ValueError:
            event = self.payload.decode("utf-8", "replace")
        fields = {name: getattr(self, name) for name in (
            "id", "event_id", "key", "table", "schema", "operation", "reason", "error_class", "attempts",
            "first_failed_at", "last_failed_at", "origin", "timestamp_ms", "encoding")}
        return fields | {"event": event}


class DeadLetterStore:
    """Reads and removes the entries of a file dead-letter directory, beside running writers.

    ``entries()`` and ``get()`` take no lock; ``remove()`` and ``purge()`` take the directory
    lock, and what they remove is gone for good (tombstones are fsynced before they return).
    Corrupt records are skipped, logged once and counted in :attr:`corrupt`.
    """

    def __init__(self, base_dir: str | Path, log: FilteringBoundLogger | None = None) -> None:
        self.directory = Path(base_dir)
        self._log = log or structlog.get_logger().bind(dlq=str(self.directory))
        self._segments = _Log(self.directory, self._log)

    @property
    def corrupt(self) -> int:
        return self._segments.corrupt

    def entries(self, ids: Iterable[str] | None = None) -> Iterator[DeadLetter]:
        """Live entries in parking order, as of this call (entries parked later are not included).

        With ``ids``: those entries, in parking order; unknown or removed ones are logged and
        skipped. Raises ValueError for a string that is not an entry id.
        """
        numbers, _ = _list_segments(self.directory)
        if ids is not None:
            return self._selected(sorted({parse_entry_id(i) for i in ids}), numbers)
        sizes: dict[int, int] = {}
        for number in sorted(numbers):
            try:
                sizes[number] = (self.directory / f"{segment_name(number)}.seg").stat().st_size
            except FileNotFoundError:
                continue
        return self._all(sizes, newest=max(numbers, default=0))

    def _all(self, sizes: dict[int, int], newest: int) -> Iterator[DeadLetter]:
        for number, size in sizes.items():
            path = self.directory / f"{segment_name(number)}.seg"
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # evicted or emptied meanwhile
            try:
                removed, _ = _load_tombstones(path.with_suffix(".del"))
                for item in _scan(fd, 0, size):
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
        path = self.directory / f"{segment_name(number)}.seg"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            body = _body_at(_Window(fd, os.fstat(fd).st_size), offset)
        finally:
            os.close(fd)
        if body is None or offset in _load_tombstones(path.with_suffix(".del"))[0]:
            return None
        return self._entry(path, offset, body)

    def _entry(self, path: Path, offset: int, body: bytes) -> DeadLetter | None:
        record = _decode(body)
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
        with _locked(self.directory):
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
    def _valid(segment: _Segment, offsets: list[int]) -> list[int]:
        """The ``offsets`` at which a whole record of ``segment`` starts."""
        fd = os.open(segment.path, os.O_RDONLY)
        try:
            window = _Window(fd, segment.scanned)
            return [o for o in offsets if _body_at(window, o) is not None]
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
        with _locked(self.directory):
            self._segments.refresh(repair=False)
            return self._segments.live


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(FileDeadLetterQueue)
