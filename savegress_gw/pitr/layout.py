"""Where the archive lives and how its segment files are named.

``<pitr.storage_dir>/<gateway id>/<bucket start>-w<worker>-<n>.jsonl.open`` while a worker writes
it, ``...-<n>.jsonl.zst`` once sealed. ``<bucket start>`` is the UTC start of the segment's time
bucket as ``%Y%m%dT%H%M%SZ``; buckets are ``granularity`` seconds long (whole seconds, at least 1)
and aligned to the Unix epoch, so every worker cuts time at the same instants. ``n`` counts the
segments of one bucket and worker (a size limit or a restart starts the next one). Transient
files end in ``.tmp``; the backup syncer uploads everything else except ``.open``.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from pathlib import Path

OPEN_SUFFIX = ".jsonl.open"
SEALED_SUFFIX = ".jsonl.zst"
TMP_SUFFIX = ".tmp"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(r"^(\d{8}T\d{6}Z)-w(\d+)-(\d+)(\.jsonl\.open|\.jsonl\.zst)$")


def bucket_seconds(granularity: float) -> int:
    """The bucket length in whole seconds (``pitr.granularity`` rounded, at least 1)."""
    return max(1, round(granularity))


def bucket_start(unix_s: float, granularity: int) -> int:
    """Start (Unix seconds) of the bucket holding the instant ``unix_s``."""
    return int(unix_s // granularity) * granularity


def format_stamp(unix_s: int) -> str:
    return time.strftime(STAMP_FORMAT, time.gmtime(unix_s))


def parse_stamp(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, STAMP_FORMAT))


def archive_dir(storage_dir: str | Path, gateway_id: str) -> Path:
    """The directory of gateway ``gateway_id``'s segments."""
    return Path(storage_dir) / gateway_id


@dataclass(frozen=True, order=True)
class Segment:
    """One segment file. Ordering (bucket, worker, n) is replay order."""

    bucket: int
    """Unix seconds of the bucket's start."""
    worker: int
    n: int
    sealed: bool
    path: Path

    @property
    def stem(self) -> str:
        """``<bucket start>-w<worker>-<n>``: names the segment whatever its state."""
        return f"{format_stamp(self.bucket)}-w{self.worker}-{self.n}"

    @property
    def key(self) -> tuple[int, int, int]:
        return self.bucket, self.worker, self.n

    @property
    def state(self) -> str:
        return "sealed" if self.sealed else "open"

    @classmethod
    def parse(cls, path: Path) -> "Segment | None":
        """The segment ``path`` names, or None for any other file (``.tmp``, foreign files)."""
        match = _NAME.match(path.name)
        if match is None:
            return None
        stamp, worker, n, suffix = match.groups()
        return cls(parse_stamp(stamp), int(worker), int(n), suffix == SEALED_SUFFIX, path)

    def with_state(self, sealed: bool) -> "Segment":
        """The same segment in the other state (its path changes with it)."""
        return Segment(self.bucket, self.worker, self.n, sealed, self.path.with_name(segment_name(
            self.bucket, self.worker, self.n, sealed)))


def segment_name(bucket: int, worker: int, n: int, sealed: bool) -> str:
    return f"{format_stamp(bucket)}-w{worker}-{n}{SEALED_SUFFIX if sealed else OPEN_SUFFIX}"


def list_segments(directory: Path) -> list[Segment]:
    """Every segment in ``directory`` in replay order; when a segment exists both open and sealed
    (a crash between sealing and removing the ``.open``), only the sealed one."""
    found: dict[tuple[int, int, int], Segment] = {}
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        segment = Segment.parse(path)
        if segment is not None and (segment.key not in found or segment.sealed):
            found[segment.key] = segment
    return sorted(found.values())

