"""``dlq.preserve_order``: which keys a worker holds behind an event parked in the dead-letter queue.

**Held.** Once an event is parked, its key is held: every later event of that key that the
worker has not handed to the sink yet is parked too (reason ``held behind parked event <id>
(dlq.preserve_order)``, 0 attempts) instead of being delivered ahead of it. On start, every key
that has a live entry in the queue is held (parked by an earlier run or by another worker);
a ``dlq replay`` run starts with none held, since its entries are what it replays.

**Released** when the queue no longer holds any entry of the key: after the entries were
replayed and delivered (``dlq replay``), or purged. The worker asks the queue every
:data:`RECHECK_S` seconds while it holds keys, in a background thread (a scan may read the whole
queue; the Kafka queue reads only what was appended or removed since its last scan), and releases
a key only if nothing of it was parked after that scan started. A
replay that runs while new events of the key keep arriving leaves those new entries behind; the
key stays held until they are replayed too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from savegress_gw.components import Batch

RECHECK_S = 5.0
"""How often a worker that holds keys asks the dead-letter queue which of them it still holds."""

Run = Callable[[Callable[[], dict[str, str]]], "Future[dict[str, str]]"]


@runtime_checkable
class KeyedQueue(Protocol):
    """A dead-letter queue that can say which keys it holds entries of."""

    def parked_keys(self) -> dict[str, str]:
        """Every key with a live entry → the event id of its oldest live entry.

        Called from a background thread while the worker keeps calling ``put``: it must not
        share a connection or file handle with ``put``. Raises when the queue cannot be read.
        """


def in_thread(scan: Callable[[], dict[str, str]]) -> "Future[dict[str, str]]":
    """Run ``scan`` in a daemon thread (an exiting worker never waits for it)."""
    future: Future[dict[str, str]] = Future()

    def run() -> None:
        try:
            future.set_result(scan())
        except BaseException as exc:  # handed to the worker, which logs it
            future.set_exception(exc)

    threading.Thread(target=run, name="dlq-holds", daemon=True).start()
    return future


class KeyHolds:
    """The held keys of one worker, each with the event it is held behind (see the module docstring).

    ``queue`` is the worker's dead-letter queue; ``load`` says whether keys already in it are held
    from the start (read here; or later by the caller, with :meth:`hold_existing`). ``run`` starts a
    scan (default: :func:`in_thread`).
    """

    def __init__(self, queue: KeyedQueue, log: object, load: bool = True, run: Run = in_thread,
                 recheck_s: float = RECHECK_S) -> None:
        self._queue, self._log, self._run, self._recheck_s = queue, log, run, recheck_s
        self._held: dict[str, str] = {}
        self._last_park: dict[str, int] = {}
        """Key → sequence number of its last park (see :meth:`parked`)."""
        self._parks = 0
        self._scan: Future[dict[str, str]] | None = None
        self._scan_after = 0
        """``_parks`` when the running scan started: later parks are not in its result."""
        self._next_scan = 0.0
        if load:
            self.hold_existing(queue.parked_keys())

    def hold_existing(self, parked: dict[str, str]) -> None:
        """Hold every key of ``parked`` (key → event id of its oldest entry, as
        :meth:`KeyedQueue.parked_keys` gives them): entries the queue had before this worker started."""
        for key, event_id in parked.items():
            self._held.setdefault(key, event_id)
        if parked:
            self._log.info("holding keys with entries in the dead-letter queue (dlq.preserve_order)", keys=len(parked))

    def __len__(self) -> int:
        return len(self._held)

    def blocker(self, key: str) -> str | None:
        """The event id ``key`` is held behind, or None when it is not held."""
        return self._held.get(key)

    def parked(self, batch: Batch) -> None:
        """``batch`` was parked: hold its keys (behind its first event of each new key)."""
        for key, event_id in zip(batch.keys, batch.ids):
            self.hold(key, event_id)

    def hold(self, key: str, event_id: str) -> None:
        """Event ``event_id`` of ``key`` is (being) parked: hold the key behind it unless it is held already."""
        self._parks += 1
        self._held.setdefault(key, event_id)
        self._last_park[key] = self._parks

    def snapshot(self) -> tuple[dict[str, str], dict[str, int]]:
        """The held keys now, for :meth:`restore` (exactly-once: holds roll back with an aborted transaction)."""
        return dict(self._held), dict(self._last_park)

    def restore(self, snapshot: tuple[dict[str, str], dict[str, int]]) -> None:
        """Hold exactly the keys of ``snapshot`` again (a running scan still releases only keys
        not parked since it started)."""
        held, last_park = snapshot
        self._held, self._last_park = dict(held), dict(last_park)

    def poll(self, now: float) -> None:
        """Take in a finished scan (releasing keys) and start the next one when it is due."""
        if self._scan is not None and self._scan.done():
            scan, self._scan = self._scan, None
            self._next_scan = now + self._recheck_s
            try:
                still = scan.result()
            except Exception as exc:  # the queue cannot be read now: keep holding, ask again later
                self._log.warning("could not read the dead-letter queue to release held keys; asking again",
                                  error=f"{type(exc).__name__}: {exc}", retry_in_s=self._recheck_s)
            else:
                self._release(still)
        if self._scan is None and self._held and now >= self._next_scan:
            self._scan_after = self._parks
            self._scan = self._run(self._queue.parked_keys)

    def _release(self, still: dict[str, str]) -> None:
        released = [key for key in self._held
                    if key not in still and self._last_park.get(key, 0) <= self._scan_after]
        for key in released:
            blocker = self._held.pop(key)
            self._last_park.pop(key, None)
            self._log.info("released a held key: the dead-letter queue holds none of its entries any more",
                           key=key, held_behind=blocker)
