"""One backup pass (:meth:`Syncer.sync_once`) and the disaster-recovery download
(:meth:`Syncer.restore`).

Contracts:

- **Upload**: every ready file (:func:`~savegress_gw.storage.layout.is_ready`) of an enabled root
  that is missing remotely, or whose remote size differs, is uploaded. A file deleted between the
  listing and its upload (retention) is skipped, not an error.
- **Delete**: retention is decided locally, by the snapshot writer (``snapshot.retention_count``)
  and the archive (``pitr.retention``); the syncer only mirrors it: a remote object of an enabled
  root is deleted when its file is gone locally *and this directory had it before*. The names a
  directory had are kept in its hidden file :data:`SEEN_FILE` (updated by every sync and restore).
  So a new host with empty directories (before ``storage restore``), or an HA node that never
  led, never deletes another host's backups; objects it never had are counted as ``foreign``.
  Except when the profile's retention rule itself has expired them (:attr:`SyncRoot.expired`:
  archive segments older than ``pitr.retention``, snapshots beyond the newest
  ``snapshot.retention_count``): those are deleted whoever uploaded them, so the objects of an
  HA node that led before this one do not pile up for ever.
- **Failure**: the first backend error ends the pass with :class:`StorageError` (nothing is
  retried within a pass; the caller retries on its next interval). What was uploaded or deleted
  before it stays done, and is counted in the error's ``partial`` result.
- **Restore**: every remote object of both roots (enabled or not) is downloaded into its local
  directory, atomically per file; existing local files are kept unless ``force``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from savegress_gw.storage.backend import Backend, StorageError, temp_path
from savegress_gw.storage.layout import SyncRoot, is_ready

SEEN_FILE = ".backup-seen"
"""Per local root: the names this directory had at the last sync (JSON list). Leading ``.``: never
backed up, and ignored by the snapshot and archive writers."""


@dataclass
class SyncResult:
    """Counts of one pass."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    deleted: int = 0
    unchanged: int = 0
    """Ready local files already remote with the same size."""
    vanished: int = 0
    """Local files deleted between the listing and their upload."""
    foreign: int = 0
    """Remote objects this directory never had (kept)."""

    def summary(self) -> str:
        return (f"uploaded {self.uploaded} files ({self.uploaded_bytes} bytes), deleted {self.deleted}, "
                f"unchanged {self.unchanged}, kept {self.foreign} this host never had")


@dataclass
class RestoreResult:
    downloaded: int = 0
    downloaded_bytes: int = 0
    kept_existing: int = 0
    """Remote objects not downloaded because the local file exists (no ``force``)."""
    skipped: list[str] = field(default_factory=list)
    """Remote keys that are no file of the layout (a subdirectory, a name not ready)."""


class SyncError(StorageError):
    """A pass failed; ``partial`` counts what it did before the failure."""

    def __init__(self, message: str, partial: SyncResult) -> None:
        super().__init__(message)
        self.partial = partial


class Syncer:
    """Mirrors the ready files of ``roots`` to ``backend``. Not thread-safe: one pass at a time."""

    def __init__(self, backend: Backend, roots: list[SyncRoot]) -> None:
        self.backend = backend
        self.roots = roots

    @property
    def enabled_roots(self) -> list[SyncRoot]:
        return [root for root in self.roots if root.enabled]

    def sync_once(self) -> SyncResult:
        """Upload what is new or changed, delete what retention removed locally; see the module
        docstring. Raises :class:`SyncError` (a :class:`StorageError`) on the first backend failure."""
        result = SyncResult()
        try:
            for root in self.enabled_roots:
                self._sync_root(root, result)
        except StorageError as exc:
            raise SyncError(str(exc), result) from exc
        except OSError as exc:  # the local directory or its seen-file cannot be read or written
            raise SyncError(f"{self.backend.name} backend {self.backend.location}: local {exc}", result) from exc
        return result

    def _sync_root(self, root: SyncRoot, result: SyncResult) -> None:
        local = local_ready_files(root.local_dir)
        remote = {key[len(root.remote_prefix):]: size for key, size in self.backend.list(root.remote_prefix).items()}
        remote = {name: size for name, size in remote.items() if "/" not in name}
        before = read_seen(root.local_dir)
        seen = before | set(local)
        if seen != before:  # recorded before uploading: a failed pass still remembers them
            write_seen(root.local_dir, seen)
        for name, size in sorted(local.items()):
            if remote.get(name) == size:
                result.unchanged += 1
                continue
            try:
                self.backend.upload(root.local_dir / name, root.key(name))
            except FileNotFoundError:
                result.vanished += 1
                continue
            result.uploaded += 1
            result.uploaded_bytes += size
        expired = set(root.expired(sorted(remote), time.time())) if root.expired else set()
        gone = sorted(name for name in remote if name not in local and (name in seen or name in expired))
        result.foreign += sum(1 for name in remote if name not in local and name not in seen and name not in expired)
        if gone:
            self.backend.delete(root.key(name) for name in gone)
            result.deleted += len(gone)
        if seen != set(local):  # what is gone locally was deleted remotely (or never got there)
            write_seen(root.local_dir, set(local))

    def restore(self, force: bool = False) -> RestoreResult:
        """Download every remote object of every root into its local directory (see the module
        docstring). Raises :class:`StorageError` on the first failure."""
        result = RestoreResult()
        for root in self.roots:
            objects = self.backend.list(root.remote_prefix)
            restored: set[str] = set()
            for key, size in sorted(objects.items()):
                name = key[len(root.remote_prefix):]
                if "/" in name or not is_ready(name):
                    result.skipped.append(key)
                    continue
                target = root.local_dir / name
                if target.exists() and not force:
                    result.kept_existing += 1
                    restored.add(name)
                    continue
                self.backend.download(key, target)
                result.downloaded += 1
                result.downloaded_bytes += size
                restored.add(name)
            if restored:
                write_seen(root.local_dir, read_seen(root.local_dir) | restored)
        return result


def local_ready_files(directory: Path) -> dict[str, int]:
    """Ready regular files directly in ``directory``: name → size (empty if it does not exist)."""
    found: dict[str, int] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    for entry in entries:
        if not is_ready(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=True):
                found[entry.name] = entry.stat().st_size
        except FileNotFoundError:
            continue
    return found


def read_seen(directory: Path) -> set[str]:
    """The names recorded in ``directory``'s :data:`SEEN_FILE` (empty when there is none or it is
    unreadable: the safe side, deleting nothing)."""
    try:
        names = json.loads((directory / SEEN_FILE).read_text())
    except (OSError, ValueError):
        return set()
    return {str(n) for n in names} if isinstance(names, list) else set()


def write_seen(directory: Path, names: set[str]) -> None:
    """Replace ``directory``'s :data:`SEEN_FILE` atomically (temp + ``os.replace``)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / SEEN_FILE
    temp = temp_path(target)
    temp.write_text(json.dumps(sorted(names)))
    os.replace(temp, target)
