"""Frames waiting for room in a worker ring, in priority classes served by weighted round robin.

Without priorities every frame is ``NORMAL`` and this is a plain FIFO. With
``parallel.priority`` (and the ``weighted_fair`` backpressure strategy), frames of
``high_priority_tables`` and ``medium_priority_tables`` get their own queues: when rings are
full, the next frames handed to a worker come 4 : 2 : 1 from high, medium and normal. Order holds
within a class, and a key's events always share one class (one table), so per-key order holds.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

HIGH, MEDIUM, NORMAL = 0, 1, 2
WEIGHTS = (4, 2, 1)

T = TypeVar("T")


class Staged(Generic[T]):
    """FIFO per class; :meth:`peek`/:meth:`pop` follow weighted round robin over non-empty classes."""

    def __init__(self) -> None:
        self.classes: tuple[deque[T], deque[T], deque[T]] = (deque(), deque(), deque())
        self._turn = HIGH
        self._credit = WEIGHTS[HIGH]

    def __bool__(self) -> bool:
        return any(self.classes)

    def append(self, item: T, klass: int = NORMAL) -> None:
        self.classes[klass].append(item)

    def _current(self) -> int:
        """The class to serve next (moving the turn on when its credit or its queue ran out)."""
        for _ in range(len(WEIGHTS) + 1):
            if self.classes[self._turn] and self._credit > 0:
                return self._turn
            self._turn = (self._turn + 1) % len(WEIGHTS)
            self._credit = WEIGHTS[self._turn]
        raise IndexError("nothing staged")

    def peek(self) -> T:
        return self.classes[self._current()][0]

    def pop(self) -> T:
        klass = self._current()
        self._credit -= 1
        return self.classes[klass].popleft()

    def pop_least_important(self) -> T:
        """The oldest item of the lowest non-empty class (what an overflow drops first)."""
        for queue in reversed(self.classes):
            if queue:
                return queue.popleft()
        raise IndexError("nothing staged")
