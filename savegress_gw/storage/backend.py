"""The one interface every backup backend implements, and the error it raises.

A backend stores whole files under string keys (``/``-separated, no leading ``/``). It knows
nothing about snapshots or archive segments: :mod:`savegress_gw.storage.syncer` decides what to
copy where.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from savegress_gw.errors import GatewayError


class StorageError(GatewayError):
    """A backend operation failed; the message names the backend, its bucket or path, the
    operation, the key and the underlying error."""


class Backend(Protocol):
    """Where backups go. Every method raises :class:`StorageError` on failure, and nothing else."""

    name: str
    """``local`` or ``s3``."""
    location: str
    """Where objects go, for logs and messages: ``/mnt/backup`` or ``s3://bucket (endpoint ...)``."""

    def list(self, prefix: str) -> dict[str, int]:
        """Every complete object whose key starts with ``prefix``: key → size in bytes.

        An upload in progress is never listed. A missing container is an error for S3 (the bucket
        must exist) and an empty listing for the local backend (its directory is created on upload).
        """
        ...

    def upload(self, path: Path, key: str) -> None:
        """Copy the local file ``path`` to ``key``, atomically: a reader sees the old object (or
        none) until the whole new one is there. Raises FileNotFoundError (not wrapped) when
        ``path`` vanished, so a caller can tell a file deleted by retention from a failing backend."""
        ...

    def download(self, key: str, path: Path) -> None:
        """Copy ``key`` to the local file ``path`` (its directory is created), atomically: through
        a temporary name starting with ``.`` in the same directory, fsync, then ``os.replace``."""
        ...

    def delete(self, keys: Iterable[str]) -> None:
        """Delete ``keys``; a key that does not exist is not an error."""
        ...


def temp_path(path: Path) -> Path:
    """A unique temporary name beside ``path`` that no backup ever picks up (leading ``.``,
    trailing ``.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")

