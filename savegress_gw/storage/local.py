"""The ``local`` backend: objects are files under a directory (a mounted backup volume, NFS).

Key ``a/b/c`` is the file ``<path>/a/b/c``. Uploads copy to a temporary name (leading ``.``,
trailing ``.tmp``) in the destination directory, fsync it and ``os.replace`` it onto the final
name, then fsync the directory: a reader sees the whole old file or the whole new one. Listings
skip names starting with ``.`` (uploads in progress, or left by a process killed mid-copy).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from savegress_gw.durable import write_atomically
from savegress_gw.storage.backend import StorageError, temp_path

COPY_CHUNK = 1 << 20


class LocalBackend:
    """Backups as files under ``root``."""

    name = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"local backend {self.location}: invalid key {key!r}")
        return self.root.joinpath(*parts)

    def list(self, prefix: str) -> dict[str, int]:
        directory = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        found: dict[str, int] = {}
        try:
            for dirpath, dirnames, filenames in os.walk(directory, onerror=_raise_unless_missing):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for filename in filenames:
                    if filename.startswith("."):
                        continue
                    path = Path(dirpath, filename)
                    key = path.relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        try:
                            found[key] = path.stat().st_size
                        except FileNotFoundError:
                            continue  # deleted while listing
        except OSError as exc:
            raise StorageError(f"local backend {self.location}: list {prefix!r}: {exc}") from exc
        return found

    def upload(self, path: Path, key: str) -> None:
        target = self._path(key)
        with open(path, "rb") as source:  # FileNotFoundError propagates: the file vanished
            try:
                _copy_atomically(source, target)
            except OSError as exc:
                raise StorageError(f"local backend {self.location}: upload {path} to {key}: {exc}") from exc

    def download(self, key: str, path: Path) -> None:
        source_path = self._path(key)
        try:
            with open(source_path, "rb") as source:
                _copy_atomically(source, path)
        except OSError as exc:
            raise StorageError(f"local backend {self.location}: download {key} to {path}: {exc}") from exc

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"local backend {self.location}: delete {key}: {exc}") from exc


def _raise_unless_missing(exc: OSError) -> None:
    """``os.walk``'s error handler: a directory that does not exist lists as empty, any other
    error (permissions, I/O) fails the listing instead of looking like an empty backup."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


def _copy_atomically(source: BinaryIO, target: Path) -> None:
    """Copy the open binary file ``source`` to ``target`` through a temp file + fsync + os.replace."""
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, temp_path(target), lambda out: shutil.copyfileobj(source, out, COPY_CHUNK))
