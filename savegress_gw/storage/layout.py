"""What is backed up, from where, to which keys.

Two roots per gateway id: the periodic state snapshots (``<snapshot.dir>/<gateway id>/``, when
``snapshot.enabled`` and ``snapshot.interval`` is set) and the point-in-time-recovery archive
(``<pitr.storage_dir>/<gateway id>/``, when ``pitr.enabled``). Only the files directly in those
directories are backed up (no subdirectories), and only those that are *ready*
(:func:`is_ready`). Remote keys: ``<prefix><gateway id>/snapshots/<name>`` and
``<prefix><gateway id>/pitr/<name>``; ``prefix`` is ``s3.prefix`` for S3 (include its trailing
``/``) and empty for the local backend, whose objects live under ``local.path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from savegress_gw.pitr.layout import bucket_seconds
from savegress_gw.pitr.retention import expired_names
from savegress_gw.profile.recovery import StorageSettings
from savegress_gw.state_snapshots import beyond_retention
from savegress_gw.storage.backend import Backend

NOT_READY_SUFFIXES = (".tmp", ".open")


def is_ready(name: str) -> bool:
    """A file is ready for backup iff its name does not start with ``.`` and does not end in
    ``.tmp`` (written, not yet renamed) or ``.open`` (an archive segment being written)."""
    return bool(name) and not name.startswith(".") and not name.endswith(NOT_READY_SUFFIXES)


@dataclass(frozen=True)
class SyncRoot:
    """One local directory and the remote prefix its files go to."""

    name: str
    """``snapshots`` or ``pitr``."""
    local_dir: Path
    remote_prefix: str
    """Ends in ``/``; a file ``n`` goes to ``remote_prefix + n``."""
    enabled: bool
    """The feature writing this directory is on: only then does a sync upload and delete here
    (a restore fetches every root)."""
    expired: Callable[[list[str], float], list[str]] | None = None
    """The names among the given object names that the profile's retention has expired at the
    given Unix time, whoever uploaded them (e.g. the HA node that led before this one)."""

    def key(self, name: str) -> str:
        return self.remote_prefix + name


def backend_for(settings: StorageSettings) -> Backend | None:
    """The backend of ``storage.backend``; None for ``none``."""
    if settings.backend == "local":
        from savegress_gw.storage.local import LocalBackend

        return LocalBackend(settings.local.path)
    if settings.backend == "s3":
        from savegress_gw.storage.s3 import S3Backend

        return S3Backend(settings.s3)
    return None


def roots_for(profile: Any) -> list[SyncRoot]:
    """The snapshot and archive roots of a validated profile (``ProfileBase``)."""
    gateway_id = profile.gateway.id
    storage: StorageSettings = profile.storage
    prefix = (storage.s3.prefix if storage.backend == "s3" else "") + f"{gateway_id}/"
    snapshot, pitr = profile.snapshot, profile.pitr
    granularity = bucket_seconds(pitr.granularity)
    return [
        SyncRoot("snapshots", Path(snapshot.dir) / gateway_id, prefix + "snapshots/",
                 bool(snapshot.enabled and snapshot.interval is not None),
                 lambda names, now: beyond_retention(names, snapshot.retention_count)),
        SyncRoot("pitr", Path(pitr.storage_dir) / gateway_id, prefix + "pitr/", bool(pitr.enabled),
                 lambda names, now: expired_names(names, pitr.retention, granularity, now)),
    ]
