"""What the ``dlq`` commands and the replay source work on: a profile's dead-letter queue as a store.

Both backends' stores (:class:`~savegress_gw.deadletter.store.DeadLetterStore` for ``file``,
:class:`~savegress_gw.deadletter.topic.TopicStore` for ``kafka``) have the shape of
:class:`EntryStore`. A dead-letter queue plugin offers its store through a ``store(profile,
log)`` method, which needs the queue's config only (the queue is not opened).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from structlog.typing import FilteringBoundLogger

from savegress_gw.assembly import instantiate
from savegress_gw.deadletter.records import DeadLetter, parse_entry_id
from savegress_gw.deadletter.topic import parse_record_id
from savegress_gw.errors import GatewayError
from savegress_gw.plugins import Registry


class EntryStore(Protocol):
    """Parked entries that can be read and removed."""

    corrupt: int
    """Unreadable records skipped so far (each logged once)."""

    @property
    def location(self) -> str:
        """Where the entries are (a directory, a topic on a cluster), for messages."""

    def entries(self, ids: Iterable[str] | None = None) -> Iterator[DeadLetter]:
        """Live entries in parking order (each key's in order); with ``ids`` only those."""

    def get(self, entry_id: str) -> DeadLetter:
        """One live entry; KeyError when there is none, ValueError for a malformed id."""

    def remove(self, ids: Iterable[str]) -> int:
        """Durably remove these entries; how many were removed."""

    def purge(self, older_than_seconds: float) -> int:
        """Remove the entries parked longer ago than this; how many were removed."""

    def count(self) -> int:
        """Live entries right now."""


def check_entry_id(entry_id: str) -> None:
    """Raise ValueError unless ``entry_id`` is an entry id of some backend (``dlq-00000001:0``, ``p0:12``)."""
    try:
        parse_entry_id(entry_id)
    except ValueError:
        try:
            parse_record_id(entry_id)
        except ValueError:
            raise ValueError(f"{entry_id!r} is not a dead-letter entry id (dlq-<segment>:<offset> for the file "
                             f"queue, p<partition>:<offset> for a Kafka topic)") from None


def profile_store(profile: Any, registry: Registry, log: FilteringBoundLogger | None = None) -> EntryStore:
    """The store of the dead-letter queue that the validated ``profile`` selects.

    Raises GatewayError when the profile has none or its plugin offers no store.
    """
    queue = instantiate("dlq", profile, registry)
    if queue is None:
        raise GatewayError("the profile has no dead-letter queue (no dlq section, or dlq.enabled: false)")
    opener = getattr(queue, "store", None)
    if opener is None:
        raise GatewayError(f"the {queue.name!r} dead-letter queue cannot be listed, replayed or purged")
    store: EntryStore = opener(profile, log)
    return store
