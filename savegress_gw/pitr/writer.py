"""One worker's archive writer: the events it delivered, appended to time segments.

Contract (what :class:`~savegress_gw.pipeline.Pipeline` relies on):

- :meth:`ArchiveWriter.append` takes the payloads of one settled batch — the exact envelope bytes
  the sink got — and writes them with one ``write`` system call (``b"\\n".join(payloads) +
  b"\\n"``) into the open segment of the current bucket, unbuffered: once it returns, the lines are
  in the kernel's page cache and survive the worker being killed (not a power loss; a sealed
  segment is fsynced). The pipeline calls it *before* acknowledging the batch's frames, so a
  crash can only archive an event twice, never lose it. An error propagates: a worker that cannot
  archive stops rather than deliver events the archive would miss.
- The bucket is chosen by the wall clock at the time of ``append`` (the moment of delivery), not
  by the event's own timestamp: a segment covers what was delivered during its bucket.
- A segment is sealed (:mod:`.sealing`) when its bucket ended — checked on every ``append`` and
  on every :meth:`tick` the worker loop makes — or when it reached ``segment_size`` bytes (the
  next one of the same bucket gets ``n + 1``). Compression runs on a background thread
  (zstandard releases the GIL), so the worker's loop only closes a file descriptor.
- :meth:`open` (at worker start) deletes this worker's leftover ``.tmp`` files, seals its leftover
  ``.open`` segments after cutting a torn last line, and applies retention; every seal applies it
  again. :meth:`close` seals the current segment and waits for the background sealing.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from savegress_gw.pitr import retention, sealing
from savegress_gw.pitr.layout import OPEN_SUFFIX, TMP_SUFFIX, Segment, bucket_start, list_segments, segment_name

CLOSE_TIMEOUT_S = 60.0
"""How long :meth:`ArchiveWriter.close` waits for the background sealing."""


class ArchiveWriter:
    """Archive of worker ``worker`` in ``directory`` (``<storage_dir>/<gateway id>``)."""

    def __init__(self, directory: Path, worker: int, granularity: int, segment_size: int, retention_s: float,
                 log: Any, metrics: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.directory, self.worker = Path(directory), worker
        self.granularity, self.segment_size, self.retention_s = granularity, segment_size, retention_s
        self.log, self.metrics, self.clock = log, metrics, clock
        self._fd: int | None = None
        self._segment: Segment | None = None
        self._bucket_end = 0.0
        self._size = 0
        self._last: tuple[int, int] = (-1, -1)
        """(bucket, n) of the newest segment this worker wrote (or found at start)."""
        self._seals: queue.Queue[Segment | None] = queue.Queue()
        self._sealer: threading.Thread | None = None
        self.failure: BaseException | None = None
        """The last error of the background sealing (logged; the ``.open`` stays for the next start)."""

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the directory, recover this worker's leftovers, apply retention, start the sealer."""
        self.directory.mkdir(parents=True, exist_ok=True)
        prefix_ok = f"-w{self.worker}-"
        for path in self.directory.glob(f"*{prefix_ok}*{TMP_SUFFIX}"):
            path.unlink(missing_ok=True)
        for segment in list_segments(self.directory):
            if segment.worker != self.worker:
                continue
            if not segment.sealed:
                sealing.recover(segment)
                self.log.info("archive segment left open by a crashed worker sealed", segment=segment.stem)
            self._last = max(self._last, (segment.bucket, segment.n))
        for path in self.directory.glob(f"*{prefix_ok}*{OPEN_SUFFIX}"):  # a crash right after sealing:
            segment = Segment.parse(path)                                  # the sealed file is complete
            if segment is not None and segment.worker == self.worker and segment.with_state(True).path.exists():
                path.unlink(missing_ok=True)
        self._expire()
        self._sealer = threading.Thread(target=self._seal_loop, name=f"pitr-sealer-w{self.worker}", daemon=True)
        self._sealer.start()

    def close(self) -> None:
        """Seal the current segment and wait (up to :data:`CLOSE_TIMEOUT_S`) for every seal. Idempotent."""
        self._roll()
        if self._sealer is not None:
            self._seals.put(None)
            self._sealer.join(CLOSE_TIMEOUT_S)
            self._sealer = None

    # ------------------------------------------------------------------ hot path

    def append(self, payloads: list[bytes]) -> None:
        """Archive one settled batch's delivered payloads (one write; see the module docstring)."""
        if not payloads:
            return
        now = self.clock()
        if self._fd is None or now >= self._bucket_end:
            self._roll()
            self._start(now)
        data = b"\n".join(payloads) + b"\n"
        view, fd = memoryview(data), self._fd
        written = os.write(fd, view)
        while written < len(view):  # a regular file takes it all at once; be correct anyway
            written += os.write(fd, view[written:])
        self._size += len(data)
        if self.metrics is not None:
            self.metrics.inc("events_archived_total", len(payloads))
        if self._size >= self.segment_size:
            self._roll()

    def tick(self, now: float | None = None) -> None:
        """Seal the open segment if its bucket ended (the worker loop calls this when idle)."""
        if self._fd is not None and (self.clock() if now is None else now) >= self._bucket_end:
            self._roll()

    # ------------------------------------------------------------------ segments

    def _start(self, now: float) -> None:
        bucket = bucket_start(now, self.granularity)
        if bucket < self._last[0]:  # the clock stepped back: stay in the newest bucket
            bucket = self._last[0]
        n = self._last[1] + 1 if bucket == self._last[0] else 0
        while any((self.directory / segment_name(bucket, self.worker, n, sealed)).exists() for sealed in (False, True)):
            n += 1
        path = self.directory / segment_name(bucket, self.worker, n, False)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment = Segment(bucket, self.worker, n, False, path)
        self._bucket_end = bucket + self.granularity
        self._size = 0
        self._last = (bucket, n)

    def _roll(self) -> None:
        """Close the open segment (if any) and hand it to the sealer."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        segment, self._segment = self._segment, None
        assert segment is not None
        if self._sealer is None:  # not opened (tests) or closing: seal inline
            self._seal(segment)
        else:
            self._seals.put(segment)

    def _seal_loop(self) -> None:
        while (segment := self._seals.get()) is not None:
            self._seal(segment)

    def _seal(self, segment: Segment) -> None:
        try:
            sealing.seal(segment)
            if self.metrics is not None:
                self.metrics.inc("archive_segments_sealed_total")
            self._expire()
        except Exception as exc:  # the .open stays; the next start of this worker seals it
            self.failure = exc
            self.log.error("archive segment could not be sealed; it stays open until the worker restarts",
                           segment=segment.stem, error=f"{type(exc).__name__}: {exc}")

    def _expire(self) -> None:
        for segment in retention.expire(self.directory, self.retention_s, self.granularity, self.clock()):
            self.log.info("archive segment past retention deleted", segment=segment.stem)
