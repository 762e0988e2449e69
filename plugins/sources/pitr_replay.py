"""The point-in-time replay source: sends archived (delivered) events through the pipeline again.

``source: {type: pitr_replay, gateway_id: main, from_time: 2026-01-15T10:30:00Z, to_time: ...,
storage_dir: ./data/pitr, granularity: 1m}`` reads the archive that gateway ``gateway_id`` wrote
with ``pitr.enabled`` (``storage_dir`` and ``granularity`` default to the profile's ``pitr``
section). This is what ``savegress-gw pitr replay`` runs (:mod:`savegress_gw.pitr_cli`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import orjson
from pydantic import field_validator
from structlog.typing import FilteringBoundLogger

from savegress_gw import Component, ComponentConfig, Context, Source, SourceBatch, hookimpl
from savegress_gw.pitr.layout import SEALED_SUFFIX, Segment, archive_dir, bucket_seconds
from savegress_gw.pitr.reader import read_lines, segments_of, select
from savegress_gw.units import Duration


class PitrReplaySource(Source):
    """Reads the archived envelopes of the segments whose bucket overlaps ``[from_time, to_time)``.

    Order: bucket by bucket, and within a bucket worker by worker (then segment ``n``), each
    segment line by line; a key was always delivered by one worker, so its events come back in
    their delivery order. Segments are those present when reading starts (sealed, or open and read
    up to their last complete line); a segment sealed meanwhile is read from its sealed file.

    ``SourceBatch.position`` is ``[segment, lines]``: the segment of the batch's last event (by its
    stem ``<bucket>-w<worker>-<n>``) and how many of its lines are read; :meth:`seek` continues
    right after it (segments before it in replay order are skipped), so a replay can resume from
    its checkpoint. Unparseable lines are logged and skipped. ``exhausted`` turns True once the
    last selected segment is read.
    """

    name = "pitr_replay"
    trusted = True  # the lines are envelopes the gateway itself normalized and encoded
    resumable = True

    class Config(ComponentConfig):
        gateway_id: str
        """The gateway whose archive is replayed (its ``gateway.id``)."""
        from_time: datetime | None = None
        """Replay from the bucket holding this time (ISO 8601; naive means UTC); unset: the oldest segment."""
        to_time: datetime | None = None
        """Replay the buckets that start before this time; unset: up to the newest segment."""
        storage_dir: str | None = None
        """The archive's base directory; unset: ``pitr.storage_dir`` of the profile."""
        granularity: Duration | None = None
        """Bucket length the archive was written with; unset: ``pitr.granularity`` of the profile."""

        @field_validator("from_time", "to_time")
        @classmethod
        def _utc(cls, value: datetime | None) -> datetime | None:
            if value is not None and value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._segments: list[Segment] = []
        self._index = 0
        """The segment being read (index into ``_segments``)."""
        self._line = 0
        """Lines of that segment read so far."""
        self._lines: Iterator[bytes] | None = None
        self._skip = 0
        self._done = False

    def open(self, context: Context) -> None:
        self._log: FilteringBoundLogger = context.log
        pitr = getattr(context.profile, "pitr", None)
        storage_dir = self.config.storage_dir or (pitr.storage_dir if pitr is not None else "./data/pitr")
        granularity = self.config.granularity or (pitr.granularity if pitr is not None else 60.0)
        self.directory = archive_dir(storage_dir, self.config.gateway_id)
        self.granularity = bucket_seconds(granularity)
        start = self.config.from_time.timestamp() if self.config.from_time else None
        end = self.config.to_time.timestamp() if self.config.to_time else None
        self._segments = select(segments_of(self.directory), self.granularity, start, end)
        self._log = self._log.bind(archive=str(self.directory))
        self._log.info("replaying archive segments", segments=len(self._segments),
                       first=self._segments[0].stem if self._segments else None,
                       last=self._segments[-1].stem if self._segments else None)

    def seek(self, position: Any) -> None:
        """Continue after ``position`` = ``[segment stem, lines read]`` (see the class docstring)."""
        if not (isinstance(position, list) and len(position) == 2 and isinstance(position[0], str)
                and isinstance(position[1], int)):
            raise ValueError(f"pitr_replay position must be [segment, line], got {position!r}")
        stem, line = position
        at = Segment.parse(Path(stem + SEALED_SUFFIX))
        if at is None:
            raise ValueError(f"pitr_replay position names no segment: {stem!r}")
        self._index = next((i for i, s in enumerate(self._segments) if s.key >= at.key), len(self._segments))
        if self._index < len(self._segments) and self._segments[self._index].key == at.key:
            self._skip = line
        self._log.info("replay resumes", segment=stem, line=line)

    def read(self, max_events: int, timeout_s: float) -> SourceBatch | None:
        events: list[dict[str, Any]] = []
        position: list[Any] | None = None
        while len(events) < max_events and self._index < len(self._segments):
            segment = self._segments[self._index]
            if self._lines is None:
                self._lines, self._line = read_lines(segment), 0
            line = next(self._lines, None)
            if line is None:
                self._lines, self._index, self._skip = None, self._index + 1, 0
                continue
            self._line += 1
            if self._line <= self._skip:
                continue
            try:
                event = orjson.loads(line)
                if not isinstance(event, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                self._log.error("archived line unreadable; skipped", segment=segment.stem, line=self._line,
                                reason=str(exc))
                continue
            events.append(event)
            position = [segment.stem, self._line]
        if self._index >= len(self._segments):
            self._done = True
        if not events:
            return None
        return SourceBatch(events, position)

    @property
    def exhausted(self) -> bool:
        return self._done


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(PitrReplaySource)
