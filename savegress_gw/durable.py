"""Making file-system changes durable."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_directory(directory: Path) -> None:
    """Make the creation, rename or deletion of files in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(target: Path, temporary: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Replace ``target`` with what ``fill`` writes, durably: written to ``temporary`` (beside
    ``target``), fsynced, renamed over ``target``, the rename fsynced. ``target`` is either the old
    file or the complete new one; on any failure ``temporary`` is removed and the error raised."""
    try:
        with open(temporary, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)
