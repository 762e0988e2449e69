"""The file dead-letter queue: parks events in the CRC-checked segment files of :mod:`savegress_gw.deadletter`.

``dlq: {type: file, base_dir: ./data/dlq, segment_size: 1GB, retention_days: 14,
max_messages: 5000000, compression: true}`` (``spec/reference.md`` 4.4 and 6.5).
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import Field
from structlog.typing import FilteringBoundLogger

from savegress_gw import Batch, Component, ComponentConfig, Compressor, Context, DeadLetterQueue, hookimpl
from savegress_gw.deadletter import DEFAULT_BASE_DIR, QUEUE_TYPE, DeadLetterStore, DeadLetterWriter
from savegress_gw.units import Size


class FileDeadLetterQueue(DeadLetterQueue):
    """Parks events in segment files under ``base_dir`` (layout and format: :mod:`savegress_gw.deadletter`).

    ``put`` and ``open`` are :meth:`DeadLetterWriter.append` and :meth:`DeadLetterWriter.open`,
    whose class docstring states the guarantees in full: ``put`` returns only after ``fsync`` and
    raises ``OSError`` when it cannot (after cutting off whatever it wrote); ``open`` cuts off a
    torn tail with a warning and never raises on what it finds on disk; corrupt records are
    skipped, logged and counted in ``corrupt``; after every put and on open, entries older than
    ``retention_days`` and the oldest beyond ``max_messages`` are evicted, logged and counted in
    ``evicted`` (failing to evict is logged, never raised).
    """

    name = QUEUE_TYPE

    class Config(ComponentConfig):
        base_dir: str = DEFAULT_BASE_DIR
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
        self._writer = DeadLetterWriter(config.base_dir, config.segment_size, config.retention_days,
                                        config.max_messages)

    @property
    def evicted(self) -> int:
        """Entries this instance evicted by retention or ``max_messages``."""
        return self._writer.evicted

    @property
    def corrupt(self) -> int:
        """Corrupt records this instance found and skipped."""
        return self._writer.corrupt

    def open(self, context: Context) -> None:
        self._compressor: Compressor | None = context.compressor if self.config.compression else None
        self._log = context.log.bind(dlq=str(self._writer.directory))
        self._writer.open(self._log)

    def put(self, batch: Batch, reason: str, attempts: int, origin: str) -> None:
        if not len(batch):
            return
        payloads, encodings = batch.payloads, ["identity"] * len(batch)
        if self._compressor is not None:
            compressed = [self._compressor.compress(p) for p in batch.payloads]
            payloads, encodings = [c.data for c in compressed], [c.encoding for c in compressed]
        self._writer.append(batch, payloads, encodings, reason, attempts, origin)

    def store(self, profile: Any = None, log: FilteringBoundLogger | None = None) -> DeadLetterStore:
        """The directory as a store, for the ``dlq`` commands and replay (the queue need not be open)."""
        return DeadLetterStore(self.config.base_dir, log)

    def parked_keys(self) -> dict[str, str]:
        """Every key with a live entry → the event id of its oldest one (``dlq.preserve_order``).

        Reads the whole directory with a store of its own (no lock, nothing shared with ``put``).
        """
        keys: dict[str, str] = {}
        for entry in DeadLetterStore(self._writer.directory, self._log).entries():
            keys.setdefault(entry.key, entry.event_id)
        return keys

    def close(self) -> None:
        self._writer.close()


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(FileDeadLetterQueue)
