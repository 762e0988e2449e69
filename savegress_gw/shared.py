"""Small shared-memory blocks that components use to coordinate across processes."""

from __future__ import annotations

from typing import Any

import multiprocess as mp


class SharedBlock:
    """``size`` float64 slots in shared memory plus one lock, created by the supervisor.

    Created before the child processes are spawned and handed to them as a process argument;
    every process then reads and writes the same slots. Hold ``lock`` for read-modify-write.
    """

    def __init__(self, size: int, context: Any | None = None) -> None:
        ctx = context or mp.get_context("spawn")
        self.slots = ctx.RawArray("d", size)
        self.lock = ctx.Lock()

    def __len__(self) -> int:
        return len(self.slots)
