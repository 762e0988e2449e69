"""The file dead-letter store: parked events in CRC-checked segment files, its writer and reader.

One log per directory, shared by every process: worker processes (through the ``file``
dead-letter queue plugin), a ``dlq replay`` run and the CLI may all work on one directory at
once. Every change (append, rotation, repair, tombstone, eviction, deletion) holds the
directory's exclusive lock; readers take no lock. Removed and evicted entries are recorded in
tombstone files, fsynced before a removal returns.

- :mod:`~savegress_gw.deadletter.records`: the record format, entry ids, :class:`DeadLetter`.
- :mod:`~savegress_gw.deadletter.segments`: the directory layout, segment scanning, the lock.
- :mod:`~savegress_gw.deadletter.view`: one process's view of the directory, and its changes.
- :mod:`~savegress_gw.deadletter.writer`: :class:`DeadLetterWriter` (append, retention).
- :mod:`~savegress_gw.deadletter.store`: :class:`DeadLetterStore` (read, remove, purge, count).
"""

from savegress_gw.deadletter.records import HEADER, MAGIC, DeadLetter, error_class, parse_entry_id
from savegress_gw.deadletter.store import DeadLetterStore
from savegress_gw.deadletter.writer import DeadLetterWriter

QUEUE_TYPE = "file"
"""The ``dlq.type`` of the dead-letter queue that keeps this store."""
DEFAULT_BASE_DIR = "./data/dlq"
"""The store's directory when the profile names none (``dlq.base_dir``)."""

__all__ = [
    "DEFAULT_BASE_DIR", "HEADER", "MAGIC", "QUEUE_TYPE", "DeadLetter", "DeadLetterStore", "DeadLetterWriter",
    "error_class", "parse_entry_id",
]
