"""Sealing a segment: ``<stem>.jsonl.open`` → ``<stem>.jsonl.zst``, crash-safe at every step.

Order of operations: compress into ``<stem>.jsonl.zst.tmp`` (zstd level 3, streamed: constant
memory), fsync it, ``os.replace`` it to ``<stem>.jsonl.zst``, fsync the directory, then delete the
``.open`` and fsync the directory again. A crash leaves either the ``.open`` alone (sealed again
at the next start), or both (the sealed one wins; the ``.open`` is sealed again to the same
content), plus perhaps a ``.tmp`` that the next start deletes.
"""

from __future__ import annotations

import os
from pathlib import Path

import zstandard

from savegress_gw.durable import fsync_directory
from savegress_gw.pitr.layout import TMP_SUFFIX, Segment

ZSTD_LEVEL = 3


def cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline (a line a crash cut short); return bytes cut."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        keep, chunk = size, 1 << 16
        while keep > 0:  # find the last b"\n" reading backwards
            start = max(0, keep - chunk)
            f.seek(start)
            data = f.read(keep - start)
            at = data.rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            keep = start
        if keep != size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


def seal(segment: Segment) -> Segment:
    """Compress the open ``segment`` into its sealed file and remove the open one (see module doc).

    The open file must not be written any more. Returns the sealed segment."""
    assert not segment.sealed
    sealed = segment.with_state(True)
    tmp = sealed.path.with_name(sealed.path.name + TMP_SUFFIX)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    with open(segment.path, "rb") as source, open(tmp, "wb") as target:
        compressor.copy_stream(source, target)
        target.flush()
        os.fsync(target.fileno())
    os.replace(tmp, sealed.path)
    fsync_directory(sealed.path.parent)
    segment.path.unlink(missing_ok=True)
    fsync_directory(sealed.path.parent)
    return sealed


def recover(segment: Segment) -> Segment:
    """A leftover open segment (its worker crashed or was killed): cut its torn tail, seal it."""
    cut_torn_tail(segment.path)
    return seal(segment)
