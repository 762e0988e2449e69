"""Delivery reports of one batch, folded into the one Outcome the Sink contract asks for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from savegress_gw.components import DeliveryCallback, Outcome, Status
from savegress_gw.kafka.errors import status_of


class BatchDelivery:
    """One batch in flight: counts its records' reports down and calls ``done`` exactly once.

    The producing code holds one count of its own until every record was produced or failed and
    then calls :meth:`release`, so ``done`` cannot fire while the batch is still being produced.
    :meth:`report` is the ``on_delivery`` callback of record ``index`` (bind it with
    ``functools.partial``); :meth:`fail`, :meth:`fail_with` and :meth:`fail_rest` count records
    that never reached librdkafka.

    The outcome: all delivered → DELIVERED; otherwise DELIVERED with ``failed`` indices and
    ``failed_status`` REJECTED when every failure is permanent (:data:`~savegress_gw.kafka.errors.
    REJECTED_CODES`), else ERRORED; when every record failed, that status for the whole batch.
    ``reason`` names the five most common (error code, message) pairs with their counts.
    """

    __slots__ = ("size", "remaining", "done", "failures", "size_limit", "on_finish")

    def __init__(self, size: int, done: DeliveryCallback, size_limit: tuple[str, int],
                 on_finish: Callable[[], None] | None = None) -> None:
        self.size = size
        self.remaining = size + 1  # +1 held by the producing code until it calls release()
        self.done: DeliveryCallback | None = done
        self.failures: list[tuple[int, Status, str, str]] = []  # (index, status, error code, message)
        self.size_limit = size_limit
        """(setting name, bytes) that a record too large for ``produce()`` is reported against."""
        self.on_finish = on_finish
        """Called once, just before ``done``."""

    def report(self, index: int, err: KafkaError | None, msg: Any) -> None:
        """The delivery callback of record ``index``."""
        if err is not None:
            self.failures.append((index, status_of(err), err.name(), f"{err.str()} (topic {msg.topic()})"))
        self.remaining -= 1
        if not self.remaining:
            self._finish()

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
        status = Status.REJECTED if all(f[1] is Status.REJECTED for f in failures) else Status.ERRORED
        counts = Counter((code, message) for _, _, code, message in failures)
        reason = "; ".join(f"{code}: {message} ({count} event{'s' if count > 1 else ''})"
                           for (code, message), count in counts.most_common(5))
        if len(counts) > 5:
            reason += f"; and {len(counts) - 5} other errors"
        failed = sorted({f[0] for f in failures})
        if len(failed) == self.size:
            done(Outcome(status, reason=reason))
        else:
            done(Outcome(Status.DELIVERED, reason=reason, failed=failed, failed_status=status))
