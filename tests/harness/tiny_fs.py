"""A small tmpfs that a test fills up on purpose: the file sink then fails with a real ENOSPC.

Needs root (``mount -t tmpfs``); :func:`mount_tiny_fs` raises :class:`CannotMount` otherwise so
the caller can skip. Filling is one ``posix_fallocate`` of every free byte into a filler file,
freeing is deleting it; :class:`Flapper` does either at random, in a thread.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
from pathlib import Path


class CannotMount(Exception):
    """This machine does not let the test mount a tmpfs (not root, or no CAP_SYS_ADMIN)."""


class TinyFilesystem:
    """A tmpfs of ``size`` bytes mounted at ``path``."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        self.filler = path / ".filler"

    def mount(self) -> "TinyFilesystem":
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise CannotMount(result.stderr.strip() or f"mount exited {result.returncode}")
        return self

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self) -> None:
        """Take every free byte (writes then fail with ENOSPC)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            chunk = self.free_bytes()
            while chunk > 0:  # the sink writes meanwhile: take what is left, in smaller steps
                try:
                    os.posix_fallocate(fd, os.fstat(fd).st_size, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2
                else:
                    chunk = self.free_bytes()
        finally:
            os.close(fd)

    def free(self) -> None:
        """Give the space back."""
        self.filler.unlink(missing_ok=True)

    @property
    def is_full(self) -> bool:
        return self.filler.exists()


class Flapper:
    """Every ``tick`` seconds, fills the filesystem with probability ``p`` and frees it otherwise."""

    def __init__(self, fs: TinyFilesystem, p: float, tick: float = 0.1, seed: int = 0) -> None:
        self.fs, self.p, self.tick = fs, p, tick
        self.full_ticks = self.ticks = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flapper", daemon=True)

    def __enter__(self) -> "Flapper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.fs.free()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.ticks += 1
            if self._rng.random() < self.p:
                self.full_ticks += 1
                self.fs.fill()
            else:
                self.fs.free()
            self._stop.wait(self.tick)
