"""The file source: replays a JSONL file of event envelopes, optionally following it as it grows.

``source: {type: file, path: events.jsonl, follow: false}``.
"""

from __future__ import annotations

import os
import time
from typing import Any, BinaryIO, Callable

import orjson
from structlog.typing import FilteringBoundLogger

from savegress_gw import Component, ComponentConfig, Context, Source, SourceBatch, hookimpl
from savegress_gw.envelope import normalize

_FOLLOW_POLL_S = 0.05
"""While following, how often the end of the file is checked for new lines."""
_COUNT_CHUNK = 1 << 20


class FileSource(Source):
    """Reads one JSON envelope per line, each checked with ``envelope.normalize`` here (``trusted``).

    ``SourceBatch.position`` is the byte offset just after the last line read (an ``int``);
    ``seek(offset)`` continues from there. Blank lines are skipped; a read that only skipped
    lines returns a batch without events, to move the position past them. A line that is not valid JSON
    or not a valid envelope is skipped and recorded in ``rejected`` as
    ``(line_number, byte_offset, reason)`` (1-based line, offset of the line's first byte), and
    logged as an error naming the file; the dead-letter queue will take these over in a later
    issue. Without ``follow``, ``exhausted`` turns True at the end of the file (a last line without
    a newline still counts); with it, reading waits for more lines and only complete lines
    (ending in a newline) are taken.
    """

    name = "file"
    resumable = True
    replays_in_order = True
    trusted = True  # every line is normalized in read(), where its line number is known

    class Config(ComponentConfig):
        path: str
        """The JSONL file to replay."""
        follow: bool = False
        """Keep waiting for lines appended to the file (like ``tail -f``) instead of stopping at its end."""

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.rejected: list[tuple[int, int, str]] = []
        """Malformed lines skipped so far: ``(line_number, byte_offset, reason)``."""
        self._offset = 0
        self._line_number = 0
        self._at_end = False

    def open(self, context: Context) -> None:
        self._log: FilteringBoundLogger = context.log.bind(file=self.config.path)
        self._file: BinaryIO = open(self.config.path, "rb")

    def close(self) -> None:
        if hasattr(self, "_file"):
            self._file.close()

    def seek(self, position: Any) -> None:
        """Continue from byte offset ``position`` (a position ``read`` returned), after ``open``.

        Raises ``ValueError`` when the offset is not the start of a line of this file (the file
        was truncated or replaced since the position was checkpointed).
        """
        size = os.fstat(self._file.fileno()).st_size
        if not isinstance(position, int) or not 0 <= position <= size:
            raise ValueError(f"{self.config.path}: position {position!r} is not an offset within the file "
                             f"({size} bytes)")
        lines = 0
        self._file.seek(0)
        while self._file.tell() < position:
            chunk = self._file.read(min(_COUNT_CHUNK, position - self._file.tell()))
            lines += chunk.count(b"\n")
        if position and not chunk.endswith(b"\n"):
            if position < size:
                raise ValueError(f"{self.config.path}: position {position} is not at the start of a line")
            lines += 1  # the end of a last line without a newline
        self._offset, self._line_number, self._at_end = position, lines, False

    def read(self, max_events: int, timeout_s: float) -> SourceBatch | None:
        deadline = time.monotonic() + timeout_s
        begin = self._offset
        events: list[dict[str, Any]] = []
        while len(events) < max_events:
            line = self._file.readline()
            if not line.endswith(b"\n") and (self.config.follow or not line):
                self._file.seek(self._offset)  # keep a partial line for when it is complete
                self._at_end = not self.config.follow
                if events or self._at_end or time.monotonic() >= deadline:
                    break
                time.sleep(min(_FOLLOW_POLL_S, max(0.0, deadline - time.monotonic())))
                continue
            start, self._offset = self._offset, self._offset + len(line)
            self._line_number += 1
            if line.strip():
                self._parse(line, start, events)
        # Skipped lines move the position too, so a checkpoint does not replay them.
        return SourceBatch(events, self._offset) if self._offset != begin else None

    @property
    def exhausted(self) -> bool:
        return self._at_end

    def _parse(self, line: bytes, start: int, events: list[dict[str, Any]]) -> None:
        """Append the envelope on ``line`` to ``events``, or record why it was rejected."""
        try:
            events.append(normalize(orjson.loads(line), "file"))
        except ValueError as exc:  # orjson.JSONDecodeError or EnvelopeError
            reason = f"{type(exc).__name__}: {exc}"
            self.rejected.append((self._line_number, start, reason))
            self._log.error("malformed event line skipped", line=self._line_number, offset=start, reason=reason)


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(FileSource)
