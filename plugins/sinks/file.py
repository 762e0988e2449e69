"""The file sink: events as JSON lines in a local file, rotated by size, old segments compressed.

``output: {type: file, path: ./data/events.jsonl, rotate: {enabled: true, max_size: 100MB,
max_files: 10, compress: true}}`` (``spec/reference.md`` 3.2).
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable

from pydantic import Field
from structlog.typing import FilteringBoundLogger

from savegress_gw import Batch, Component, ComponentConfig, Compressor, Context, Outcome, Sink, Status, hookimpl
from savegress_gw.durable import fsync_directory
from savegress_gw.compression import FILE_SUFFIX
from savegress_gw.components import DeliveryCallback
from savegress_gw.units import Size

_TAIL_CHUNK = 64 * 1024


class RotateOptions(ComponentConfig):
    enabled: bool = True
    """Rotate the file by size; off: one file that grows without bound."""
    max_size: Size = Field(100 * 1024**2, ge=1)
    """Size at which the active file is rotated to ``<path>.<n>`` (a single larger batch still goes in whole)."""
    max_files: int = Field(10, ge=1)
    """Rotated segments kept; the oldest beyond this are deleted (the active file does not count)."""
    compress: bool = True
    """Compress each rotated segment with the profile's compressor, to ``<path>.<n>.lz4`` or ``.zst``."""


class FileSink(Sink):
    """Appends each batch to ``path`` as JSON lines (one envelope per line) with a single write.

    Delivery by ``replication.ack_mode``: ``none`` acknowledges once the batch is in Python's
    file buffer, ``leader`` once it is flushed to the OS, ``all`` once it is fsynced (the
    directory is fsynced too when the active file is created). Without a profile: ``leader``.
    An ``OSError`` is reported as ``ERRORED``: what of the failed write reached the file is cut
    off again (with ``leader``/``all`` or several workers, where nothing else is buffered), the
    rest still buffered is discarded, and the active file is reopened as on start.

    Several workers (``gateway.workers`` > 1) share one ``path``: every write, rotation and
    recovery holds an exclusive ``flock`` on ``.<name>.lock`` beside it, a worker whose file was
    rotated away by another reopens the new one, and each worker flushes its batch to the OS before
    letting go of the lock (so ``none`` buffers only with a single worker).

    Rotation: before a batch that would take the active file past ``rotate.max_size``, the file
    is renamed to ``<path>.<n>``, ``n`` one above the highest segment present (never reused). With
    ``rotate.compress`` and a profile compressor, the segment is then compressed whole into
    ``<path>.<n><suffix>`` (suffix by the encoding the compressor used; ``identity`` keeps it
    plain) through ``<...>.tmp``, fsync and rename, and only then is the plain segment removed.
    Segments beyond ``rotate.max_files`` are deleted, oldest first. Compression runs inside
    ``send`` (the profile compressor is not thread-safe), so one batch per rotation waits for it.

    Recovery on ``open``: leftover ``.tmp`` files are removed; a plain segment whose compressed
    twin exists is removed, one without it is compressed; the active file is appended to, after
    cutting a last line that lacks its newline (a write that died midway, so never acknowledged
    under ``leader`` or ``all``).
    """

    name = "file"

    class Config(ComponentConfig):
        path: str = "./data/events.jsonl"
        """The active JSONL file; its directory is created if missing."""
        rotate: RotateOptions = RotateOptions()
        """Size-based rotation of the active file."""

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._file: BinaryIO | None = None
        self._lock: int | None = None

    def open(self, context: Context) -> None:
        profile = context.profile
        self._log: FilteringBoundLogger = context.log.bind(file=self.config.path)
        self._ack = "leader" if profile is None else profile.replication.ack_mode
        self._shared = profile is not None and profile.gateway.workers > 1
        self._compressor: Compressor | None = context.compressor if self.config.rotate.compress else None
        self._path = Path(self.config.path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self._path.with_name(f".{self._path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        with self._locked():
            self._recover_segments()
            self._open_active()

    def send(self, batch: Batch, done: DeliveryCallback) -> None:
        if not batch:
            done(Outcome(Status.DELIVERED))
            return
        try:
            with self._locked():
                try:
                    self._append(b"\n".join(batch.payloads) + b"\n")
                except OSError:
                    self._drop_active()
                    raise
        except OSError as exc:
            done(Outcome(Status.ERRORED, reason=f"{self.config.path}: {exc}"))
            return
        done(Outcome(Status.DELIVERED))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        assert self._lock is not None, "open() first"
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ active file (under the lock)

    def _append(self, data: bytes) -> None:
        file = self._current()
        rotate = self.config.rotate
        size = max(os.fstat(file.fileno()).st_size, file.tell())  # tell() counts what is still buffered
        if rotate.enabled and size and size + len(data) > rotate.max_size:
            file = self._rotate(file)
        flushed = self._ack != "none" or self._shared
        # Where this write lands (O_APPEND, under the lock): the real end of the file, which another
        # worker may have moved (tell() would not know); nothing is buffered when every write flushes.
        start = os.fstat(file.fileno()).st_size if flushed else None
        try:
            file.write(data)
            if flushed:
                file.flush()
            if self._ack == "all":
                os.fsync(file.fileno())
        except OSError:
            if start is not None:
                _cut_back(file, start)
            raise

    def _current(self) -> BinaryIO:
        """The active file, reopened (which cuts a torn tail) when it is not open, when it was
        rotated away, or, with several workers, when one of them died in the middle of a write."""
        file = self._file
        if file is not None and (not _is_at(file, self._path) or (self._shared and not _ends_whole(file))):
            file.close()
            file = self._file = None
        return file or self._open_active()

    def _open_active(self) -> BinaryIO:
        created = not self._path.exists()
        cut = _cut_torn_tail(self._path)
        if cut:
            self._log.warning("cut an incomplete last line from the active file", bytes=cut)
        self._file = file = open(self._path, "a+b")  # readable too, for _ends_whole
        if created and self._ack == "all":
            fsync_directory(self._path.parent)
        return file

    def _drop_active(self) -> None:
        """Forget the active file after a failed write (under the lock); the next send reopens it.

        The buffered rest of the failed write is discarded, never written: flushed later (by
        ``close``, or after another worker's append) it would start in the middle of a line, a
        torn line that no newline check finds. So the descriptor is first pointed at /dev/null
        (``dup2``: atomic, the number cannot be reused meanwhile) and only then closed.
        """
        file, self._file = self._file, None
        if file is None:
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, file.fileno())
        finally:
            os.close(null)
        try:
            file.close()
        except OSError:
            pass

    def _rotate(self, active: BinaryIO) -> BinaryIO:
        """Move the active file to the next segment; return the new, empty active file."""
        active.close()
        self._file = None
        segment = self._segment(max(self._segments(), default=0) + 1)
        os.replace(self._path, segment)
        file = self._open_active()
        if self._compressor is not None:
            self._compress(segment, self._compressor)
        self._prune()
        return file

    # ------------------------------------------------------------------ segments (under the lock)

    def _segment(self, number: int) -> Path:
        return self._path.with_name(f"{self._path.name}.{number}")

    def _segments(self) -> dict[int, list[Path]]:
        """Every file of a rotated segment (plain, compressed, temporary), by segment number."""
        suffixes = "|".join(re.escape(s) for s in FILE_SUFFIX.values() if s)
        pattern = re.compile(rf"{re.escape(self._path.name)}\.(\d+)(?:{suffixes})?(?:\.tmp)?")
        found: dict[int, list[Path]] = {}
        for entry in os.scandir(self._path.parent):
            match = pattern.fullmatch(entry.name)
            if match:
                found.setdefault(int(match[1]), []).append(Path(entry.path))
        return found

    def _recover_segments(self) -> None:
        """Finish what a crash interrupted (see the class docstring)."""
        for number, files in sorted(self._segments().items()):
            plain = self._segment(number)
            for tmp in (f for f in files if f.name.endswith(".tmp")):
                tmp.unlink()
            if plain not in files:
                continue
            if any(f != plain and not f.name.endswith(".tmp") for f in files):
                plain.unlink()
            elif self._compressor is not None:
                self._compress(plain, self._compressor)
        self._prune()

    def _compress(self, segment: Path, compressor: Compressor) -> None:
        """Replace ``segment`` by its compressed form, atomically; on failure log it and keep it plain."""
        tmp: Path | None = None
        try:
            result = compressor.compress(segment.read_bytes())
            if result.encoding == "identity":
                return
            target = segment.with_name(segment.name + FILE_SUFFIX[result.encoding])
            tmp = target.with_name(target.name + ".tmp")
            with open(tmp, "wb") as out:
                out.write(result.data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
            fsync_directory(segment.parent)
            segment.unlink()
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            self._log.error("could not compress a rotated segment; it stays plain", segment=str(segment),
                            reason=str(exc))

    def _prune(self) -> None:
        """Delete every file of the oldest segments beyond ``rotate.max_files``."""
        segments = self._segments()
        for number in sorted(segments)[: -self.config.rotate.max_files]:
            for file in segments[number]:
                file.unlink(missing_ok=True)


def _cut_back(file: BinaryIO, start: int) -> None:
    """After a failed write that began at offset ``start`` (the end of the file before it, taken
    under the lock): cut off what of it reached the file, so a batch reported failed leaves no
    whole lines behind (they would be duplicates after the retry). If even that fails, reopening
    cuts the torn last line and the whole ones stay (duplicates). With ``ack_mode: none`` and one
    worker, earlier batches may still be buffered, so the start is unknown and nothing is cut."""
    try:
        os.ftruncate(file.fileno(), start)
    except OSError:
        pass


def _is_at(file: BinaryIO, path: Path) -> bool:
    """Whether ``path`` still names the open ``file`` (not after another worker's rotation)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(file.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _ends_whole(file: BinaryIO) -> bool:
    """Whether the (flushed) ``file`` is empty or ends with a newline."""
    size = os.fstat(file.fileno()).st_size
    return size == 0 or os.pread(file.fileno(), 1, size - 1) == b"\n"


def _cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; return the bytes cut (0 when absent or whole)."""
    try:
        file = open(path, "r+b")
    except FileNotFoundError:
        return 0
    with file:
        end = keep = file.seek(0, os.SEEK_END)
        while keep > 0:
            start = max(0, keep - _TAIL_CHUNK)
            file.seek(start)
            newline = file.read(keep - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        if keep < end:
            file.truncate(keep)
    return end - keep


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(FileSink)
