"""Retention: a sealed segment whose bucket ended more than ``pitr.retention`` ago is deleted.

Open segments are never deleted here (their worker still writes them, or the next start of that
worker seals them first). Every worker of a gateway may expire the whole archive directory at
once: a file another one deleted first is simply gone.
"""

from __future__ import annotations

from pathlib import Path

from savegress_gw.pitr.layout import Segment, list_segments


def expired(segments: list[Segment], retention_s: float, granularity: int, now: float) -> list[Segment]:
    """The sealed ``segments`` whose bucket ended before ``now - retention_s``."""
    horizon = now - retention_s
    return [s for s in segments if s.sealed and s.bucket + granularity <= horizon]


def expired_names(names: list[str], retention_s: float, granularity: int, now: float) -> list[str]:
    """The names among ``names`` of sealed segments whose bucket ended before ``now - retention_s``
    (other names are never expired): the same rule for copies elsewhere, e.g. backup objects."""
    segments = [segment for segment in map(Segment.parse, map(Path, names)) if segment is not None]
    return [segment.path.name for segment in expired(segments, retention_s, granularity, now)]


def expire(directory: Path, retention_s: float, granularity: int, now: float) -> list[Segment]:
    """Delete the expired sealed segments of ``directory``; return those this call deleted."""
    deleted = []
    for segment in expired(list_segments(directory), retention_s, granularity, now):
        try:
            segment.path.unlink()
        except FileNotFoundError:
            continue
        deleted.append(segment)
    return deleted
