"""Backup storage: state snapshots and sealed point-in-time-recovery segments copied to a local
directory or an S3 bucket (docs/recovery.md, "Backup storage").

- :mod:`~savegress_gw.storage.backend`: the backend interface and :class:`StorageError`
- :mod:`~savegress_gw.storage.local`, :mod:`~savegress_gw.storage.s3`: the two backends
- :mod:`~savegress_gw.storage.layout`: which files, which keys (the ready-file rule)
- :mod:`~savegress_gw.storage.syncer`: one sync pass, and the restore
- :mod:`~savegress_gw.storage.service`: the supervisor's sync thread and its metrics
"""

from savegress_gw.storage.backend import Backend, StorageError
from savegress_gw.storage.layout import SyncRoot, backend_for, is_ready, roots_for
from savegress_gw.storage.syncer import RestoreResult, SyncError, Syncer, SyncResult

__all__ = ["Backend", "RestoreResult", "StorageError", "SyncError", "SyncResult", "SyncRoot", "Syncer",
           "backend_for", "is_ready", "roots_for"]
