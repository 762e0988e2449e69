"""Delivery reports of one batch, folded into the one Outcome the Sink contract asks for."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError

from savegress_gw.components import DeliveryCallback, Outcome, Status
from savegress_gw.kafka.errors import status_of


class BatchDelivery:
    """One batch in flight: counts its records' reports down and calls ``done`` exactly once.

    The producing code holds one count of its own until every record was produced or failed and
    then calls :meth:`release`, so ``done`` cannot fire while the batch is still being produced.
    :meth:`report` is the ``on_delivery`` callback of *every* record of the batch (one bound
    method per batch, no per-record object); a failed report is matched back to its record by key
    and value (:meth:`index_of`). :meth:`fail`, :meth:`fail_with` and :meth:`fail_rest` count
    records that never reached librdkafka.

    The outcome: all delivered → DELIVERED; otherwise DELIVERED with ``failed`` indices and
    ``failed_status`` REJECTED when every failure is permanent (:data:`~savegress_gw.kafka.errors.
    REJECTED_CODES`), else ERRORED; when every record failed, that status for the whole batch.
    ``reason`` names the five most common (error code, message) pairs with their counts.
    """

    __slots__ = ("size", "remaining", "done", "failures", "size_limit", "on_finish", "keys", "values", "_unmatched")

    def __init__(self, size: int, done: DeliveryCallback, size_limit: tuple[str, int],
                 on_finish: Callable[[], None] | None = None, keys: Sequence[str | bytes] = (),
                 values: Sequence[bytes] = ()) -> None:
        self.size = size
        self.remaining = size + 1  # +1 held by the producing code until it calls release()
        self.done: DeliveryCallback | None = done
        self.failures: list[tuple[int | None, Status, str, str]] = []  # (index, status, error code, message)
        self.size_limit = size_limit
        """(setting name, bytes) that a record too large for ``produce()`` is reported against."""
        self.on_finish = on_finish
        """Called once, just before ``done``."""
        self.keys, self.values = keys, values
        """The batch's record keys (str is produced as UTF-8) and values, in index order: what a failed
        report is matched against."""
        self._unmatched: dict[tuple[bytes, bytes], deque[int]] | None = None

    def report(self, err: KafkaError | None, msg: Any) -> None:
        """The delivery callback of each record of the batch."""
        if err is not None:
            self.failures.append((self.index_of(msg), status_of(err), err.name(),
                                  f"{err.str()} (topic {msg.topic()})"))
        self.remaining -= 1
        if not self.remaining:
            self._finish()

    def index_of(self, msg: Any) -> int | None:
        """The index of the record a failed delivery report is about: the first record with the
        same key and value not matched before (records with equal key and value are the same
        event twice, so which of them fails does not matter, only that each is counted once).
        None if no record matches, which fails the whole batch ERRORED: never acknowledge blindly."""
        if self._unmatched is None:
            unmatched: dict[tuple[bytes, bytes], deque[int]] = defaultdict(deque)
            for index, key, value in zip(range(self.size), self.keys, self.values):
                unmatched[(key.encode() if isinstance(key, str) else key or b"", value or b"")].append(index)
            self._unmatched = unmatched
        candidates = self._unmatched.get((msg.key() or b"", msg.value() or b""))
        return candidates.popleft() if candidates else None

    def fail(self, index: int, err: KafkaError, topic: str, size: int) -> None:
        """``produce()`` refused record ``index`` (``size``: its key and value bytes)."""
        message = f"{err.str()} (topic {topic})"
        if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            name, limit = self.size_limit
            message = f"{err.str()}: a record of {size} bytes exceeds {name} {limit} (topic {topic})"
        self.fail_with(index, status_of(err), err.name(), message)

    def fail_with(self, index: int, status: Status, code: str, message: str) -> None:
        """Record ``index`` will not be produced, for a reason found before librdkafka saw it."""
        self.failures.append((index, status, code, message))
        self.release()

    def fail_rest(self, indices: range, code: str, message: str, routes: list[Any] | None) -> None:
        """Records ``indices`` will not be produced: ERRORED. Those whose entry in ``routes`` is
        None already failed (while routing) and are skipped."""
        for index in indices:
            if routes is not None and routes[index] is None:
                continue
            self.fail_with(index, Status.ERRORED, code, message)

    def release(self) -> None:
        """Give up one count: the producing code's own, or that of a record that failed before produce."""
        self.remaining -= 1
        if not self.remaining:
            self._finish()

    def _finish(self) -> None:
        done = self.done
        if done is None:  # never twice, whatever happened on the way
            return
        self.done = None
        if self.on_finish is not None:
            self.on_finish()
        failures = self.failures
        if not failures:
            done(Outcome(Status.DELIVERED))
            return
        unknown = any(f[0] is None for f in failures)
        status = Status.REJECTED if not unknown and all(f[1] is Status.REJECTED for f in failures) else Status.ERRORED
        counts = Counter((code, message) for _, _, code, message in failures)
        reason = "; ".join(f"{code}: {message} ({count} event{'s' if count > 1 else ''})"
                           for (code, message), count in counts.most_common(5))
        if len(counts) > 5:
            reason += f"; and {len(counts) - 5} other errors"
        failed = sorted({f[0] for f in failures if f[0] is not None})
        if unknown or len(failed) == self.size:
            done(Outcome(status, reason=reason))
        else:
            done(Outcome(Status.DELIVERED, reason=reason, failed=failed, failed_status=status))
