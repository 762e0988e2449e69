"""The dead-letter replay source: sends events parked in a dead-letter queue back through the pipeline.

``source: {type: dlq_replay, base_dir: ./data/dlq, ids: [...], table: public.users}`` replays a
file queue's directory; without ``base_dir``, the profile's own dead-letter queue (``dlq``
section, file or Kafka). This is what ``savegress-gw dlq replay`` runs.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson
from pydantic import field_validator
from structlog.typing import FilteringBoundLogger

from savegress_gw import Component, ComponentConfig, Context, Source, SourceBatch, hookimpl
from savegress_gw.deadletter import DeadLetter, DeadLetterStore
from savegress_gw.deadletter.stores import EntryStore, check_entry_id, profile_store
from savegress_gw.plugins import collect_components, get_plugin_manager


class DlqReplaySource(Source):
    """Reads the parked entries (in parking order) as the envelopes they were.

    The entries are those present when reading starts: events parked again during the replay
    get new entries and are not read twice. ``SourceBatch.position`` is the index (over the
    whole run) of the batch's last entry; ``commit(position)`` removes exactly the entries up to
    it from the queue, which happens only once they were delivered (or parked again). A batch
    that a drop policy thinned (``dropped`` > 0) stays in the queue whole, since the dropped
    events are not named: its delivered events will be replayed again next time (at least once).
    An entry whose payload cannot be read or parsed is logged and left in the queue. Positions
    only mean something within one run, so the source is not resumable; ``exhausted`` turns
    True once every entry was read.
    """

    name = "dlq_replay"
    trusted = True  # the payloads are envelopes the gateway itself normalized and encoded

    class Config(ComponentConfig):
        base_dir: str | None = None
        """A file dead-letter queue directory to replay; unset: the profile's dead-letter queue."""
        ids: list[str] = []
        """Replay only these entry ids (as ``dlq list`` shows them); empty: every entry."""
        table: str | None = None
        """Replay only entries of this table (``table`` or ``schema.table``)."""

        @field_validator("ids")
        @classmethod
        def _entry_ids(cls, ids: list[str]) -> list[str]:
            for entry_id in ids:
                check_entry_id(entry_id)
            return ids

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._pending: list[str] = []
        """Entry ids read but not committed yet; ``_base`` is the position of the first."""
        self._base = 0
        self._done = False

    def open(self, context: Context) -> None:
        self._log: FilteringBoundLogger = context.log
        self._store: EntryStore
        if self.config.base_dir is not None:
            self._store = DeadLetterStore(self.config.base_dir, self._log.bind(dlq=self.config.base_dir))
        else:
            self._store = profile_store(context.profile, collect_components(get_plugin_manager()), self._log)
        self._log = self._log.bind(dlq=self._store.location)
        self._entries = self._store.entries(self.config.ids or None)

    def read(self, max_events: int, timeout_s: float) -> SourceBatch | None:
        events: list[dict[str, Any]] = []
        while len(events) < max_events:
            entry = next(self._entries, None)
            if entry is None:
                self._done = True
                break
            if self._selected(entry):
                event = self._event(entry)
                if event is not None:
                    events.append(event)
                    self._pending.append(entry.id)
        if not events:
            return None
        return SourceBatch(events, self._base + len(self._pending) - 1)

    def commit(self, position: Any, dropped: int = 0) -> None:
        count = position + 1 - self._base
        settled, self._pending = self._pending[:count], self._pending[count:]
        self._base += count
        if dropped:
            self._log.warning("a drop policy discarded replayed events; their batch stays in the dead-letter queue",
                              dropped=dropped, entries=len(settled))
            return
        self._store.remove(settled)

    @property
    def exhausted(self) -> bool:
        return self._done

    def _selected(self, entry: DeadLetter) -> bool:
        table = self.config.table
        return table is None or table in (entry.table, f"{entry.schema}.{entry.table}")

    def _event(self, entry: DeadLetter) -> dict[str, Any] | None:
        try:
            event = orjson.loads(entry.payload)
            if not isinstance(event, dict):
                raise ValueError("the payload is not a JSON object")
        except ValueError as exc:  # corrupt compressed data, or not an envelope
            self._log.error("dead-letter entry unreadable; left in the queue", id=entry.id, reason=str(exc))
            return None
        return event


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(DlqReplaySource)
