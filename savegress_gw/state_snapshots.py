"""Periodic state snapshots: timestamped copies of a gateway's checkpoint, to rewind it later.

With ``snapshot.enabled`` and ``snapshot.interval`` set, the source process copies the checkpoint
it has just saved (``{"source", "position", "updated_at"}``, :mod:`savegress_gw.checkpoint`) every
``interval`` into ``<snapshot.dir>/<gateway id>/<UTC %Y%m%dT%H%M%SZ>.json``, adding
``"taken_at"`` and ``"gateway_id"``. A name that exists already gets ``-1``, ``-2``, ... before
``.json``. ``savegress-gw snapshot restore`` (:mod:`savegress_gw.snapshot_cli`) writes a
snapshot's position back as the checkpoint.

Contracts:

- A snapshot file is complete or absent: it is written as ``<name>.json.tmp``, fsynced, renamed
  into place and the directory fsynced. Files ending in ``.tmp`` are never snapshots (a backup
  syncer may copy every other file of the directory); a crash may leave one behind, and the next
  :meth:`StateSnapshots.take` deletes it. No other temporary names are ever used.
- After every take at most ``retention_count`` snapshots remain: the oldest are deleted.
- Order (newest first) is by name: timestamp, then collision suffix. Files in the directory that
  do not have a snapshot's name are ignored and never deleted.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from savegress_gw.durable import fsync_directory, write_atomically
from savegress_gw.errors import GatewayError
from savegress_gw.profile.cdc import SnapshotSettings

SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"
NAME_FORMAT = "%Y%m%dT%H%M%SZ"
"""``time.strftime`` format of a snapshot's name (UTC), before any ``-N`` and ``.json``."""
_NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:-([1-9]\d*))?$")


class SnapshotError(GatewayError):
    """A state snapshot cannot be read or written; the message names the file."""


class SnapshotNotFound(SnapshotError):
    """No snapshot has the name asked for; ``available`` holds the names there are, newest first."""

    def __init__(self, message: str, available: list[str]) -> None:
        super().__init__(message)
        self.available = available


@dataclass(frozen=True)
class StateSnapshot:
    """One stored snapshot: its name (the file name without ``.json``) and its record."""

    name: str
    path: Path
    record: dict[str, Any]

    @property
    def source(self) -> str:
        """The source type whose position this is."""
        return str(self.record["source"])

    @property
    def position(self) -> Any:
        return self.record["position"]

    @property
    def taken_at(self) -> str:
        return str(self.record.get("taken_at", ""))


def snapshot_name(name: str) -> str:
    """``name`` without a trailing ``.json``; raises ValueError unless it is a snapshot's name
    (so a name can never point outside the snapshot directory)."""
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    if not _NAME.match(stem):
        raise ValueError(f"{name!r} is not a state snapshot name (like 20260101T120000Z or 20260101T120000Z-1)")
    return stem


def _order(stem: str) -> tuple[str, int]:
    match = _NAME.match(stem)
    assert match is not None
    return match.group(1), int(match.group(2) or 0)


def beyond_retention(names: Iterable[str], retention_count: int) -> list[str]:
    """The names among ``names`` (snapshot names, with or without ``.json``; others are ignored)
    older than the newest ``retention_count``, newest first, as given."""
    named = [(name, name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name) for name in names]
    ordered = sorted(((name, stem) for name, stem in named if _NAME.match(stem)), key=lambda n: _order(n[1]),
                     reverse=True)
    return [name for name, _ in ordered[retention_count:]]


class StateSnapshots:
    """The state snapshots of one gateway: take (and prune), list, load."""

    def __init__(self, settings: SnapshotSettings, gateway_id: str, started_at: float | None = None) -> None:
        """``started_at`` (``time.monotonic()``, default now) starts the first interval: the
        first snapshot is due one ``interval`` later. Nothing is touched on disk here."""
        self.settings = settings
        self.gateway_id = gateway_id
        self.directory = Path(settings.dir) / gateway_id
        self.last_at = time.monotonic() if started_at is None else started_at
        """Monotonic time of the last take (or attempt, or the start)."""
        self.last_position: Any = None
        """Position of the last snapshot this object took (None: none yet)."""

    @property
    def periodic(self) -> bool:
        """Whether the profile asks for periodic snapshots (``enabled`` and ``interval`` set)."""
        return self.settings.enabled and self.settings.interval is not None

    def due(self, now: float) -> bool:
        """True when periodic snapshots are on and ``interval`` has passed (monotonic ``now``)
        since the last take, or attempt, or since the start."""
        interval = self.settings.interval
        return self.periodic and interval is not None and now - self.last_at >= interval

    def take(self, record: Mapping[str, Any], now: float | None = None) -> StateSnapshot:
        """Store a copy of the checkpoint ``record`` (needs ``source`` and ``position``) as a new
        snapshot, then delete the oldest beyond ``retention_count``; returns the new snapshot.

        ``now`` (monotonic, default now) restarts the interval, also when writing fails.
        Raises SnapshotError when the file cannot be written (no temporary file is left).
        """
        self.last_at = time.monotonic() if now is None else now
        if "source" not in record or "position" not in record:
            raise ValueError("a checkpoint record has a source and a position")
        wall = time.time()
        content = {**record, "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall)),
                   "gateway_id": self.gateway_id}
        try:
            created = not self.directory.is_dir()
            self.directory.mkdir(parents=True, exist_ok=True)
            if created:
                fsync_directory(self.directory.parent)
            self._remove_temporaries()
            path = self._free_path(time.strftime(NAME_FORMAT, time.gmtime(wall)))
            self._write(path, content)
        except OSError as exc:
            raise SnapshotError(f"failed to write a state snapshot in {self.directory}: {exc}") from None
        self.last_position = record["position"]
        self.prune()
        return StateSnapshot(path.name[:-len(SUFFIX)], path, content)

    def prune(self) -> builtins.list[str]:
        """Delete the oldest snapshots beyond ``retention_count``; returns the names deleted."""
        doomed = beyond_retention(self.list(), self.settings.retention_count)
        for name in doomed:
            try:
                (self.directory / f"{name}{SUFFIX}").unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SnapshotError(f"failed to delete old state snapshot {self.directory / name}{SUFFIX}: "
                                    f"{exc}") from None
        if doomed:
            fsync_directory(self.directory)
        return doomed

    def list(self) -> builtins.list[str]:
        """Names of the stored snapshots, newest first (none when the directory does not exist)."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        stems = [entry[:-len(SUFFIX)] for entry in entries if entry.endswith(SUFFIX)]
        return sorted((stem for stem in stems if _NAME.match(stem)), key=_order, reverse=True)

    def recall(self) -> None:
        """Set :attr:`last_position` from the newest readable snapshot on disk (after a restart)."""
        for name in self.list():
            try:
                self.last_position = self.load(name).position
                return
            except SnapshotError:
                continue

    def load(self, name: str) -> StateSnapshot:
        """The snapshot ``name`` (as :meth:`list` gives it; a trailing ``.json`` is accepted).

        Raises ValueError for something that is not a snapshot's name, SnapshotNotFound when
        there is no such snapshot and SnapshotError when its file is unreadable or not a snapshot.
        """
        stem = snapshot_name(name)
        path = self.directory / f"{stem}{SUFFIX}"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SnapshotNotFound(f"no state snapshot {stem} in {self.directory}", self.list()) from None
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"state snapshot {path} is unreadable: {exc}") from None
        if not isinstance(data, dict) or "source" not in data or "position" not in data:
            raise SnapshotError(f"state snapshot {path} is corrupted: it has no source and position")
        return StateSnapshot(stem, path, data)

    # ------------------------------------------------------------------ writing

    def _free_path(self, stem: str) -> Path:
        """``<stem>.json``, or ``<stem>-N.json`` with the smallest N >= 1 not taken."""
        path, n = self.directory / f"{stem}{SUFFIX}", 0
        while path.exists():
            n += 1
            path = self.directory / f"{stem}-{n}{SUFFIX}"
        return path

    def _write(self, path: Path, content: dict[str, Any]) -> None:
        """Write ``content`` to ``path`` atomically and durably through ``<path>.tmp``."""
        data = json.dumps(content).encode()
        write_atomically(path, path.with_name(path.name + TEMP_SUFFIX), lambda handle: handle.write(data))

    def _remove_temporaries(self) -> None:
        """Delete the ``.tmp`` files of snapshots a crash left behind."""
        for entry in os.listdir(self.directory):
            if entry.endswith(SUFFIX + TEMP_SUFFIX) and _NAME.match(entry[:-len(SUFFIX + TEMP_SUFFIX)]):
                (self.directory / entry).unlink(missing_ok=True)
