"""Events of an exactly-once transaction that Kafka cannot take: parked in the same transaction.

An event is *rejected* when no retry can deliver it: its record is larger than
``output.max_request_size``, its topic template gives no legal topic name, or librdkafka refuses
it locally for good. With a dead-letter queue (``dlq.type: kafka``, on the output's cluster) its
dead-letter record is produced into the open transaction, so it becomes visible exactly when the
rest of the transaction does, and is gone if the transaction aborts (the replay parks it again).
Without one, or when the dead-letter record is larger than ``dlq.max_record_size`` or the
dead-letter topic's ``max.message.bytes`` allow, the event is dropped and logged by id. Either way it is counted
(``events_dead_lettered_total`` or ``events_dropped_total{reason="rejected"}``) only when the
transaction commits, so an aborted and replayed transaction counts its events once.

With ``dlq.preserve_order`` every later event of a parked event's key is parked behind it
(reason ``held behind parked event <id> (dlq.preserve_order)``), in the same transaction or a
later one, until ``dlq replay`` or ``dlq purge`` empties the queue of that key
(:class:`~savegress_gw.deadletter.holds.KeyHolds`). An aborted transaction's holds are rolled back
with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from savegress_gw.components import Batch, Status
from savegress_gw.deadletter.holds import KeyHolds
from savegress_gw.exactly_once.producer import TransactionalProducer
from savegress_gw.kafka.errors import describe, status_of
from savegress_gw.kafka.record_size import record_size
from savegress_gw.metrics import ProcessMetrics

LOGGED_IDS = 20
"""Event ids a log line names at most."""


class TransactionalQueue(Protocol):
    """A dead-letter queue whose records a Kafka transaction of the output's cluster can carry
    (the ``kafka`` queue). Validation asks for ``record_headers`` on the queue's class."""

    @property
    def topic(self) -> str:
        """The dead-letter topic, on the output's cluster."""

    @property
    def max_record_size(self) -> int:
        """The largest dead-letter record the topic takes."""

    def record_headers(self, batch: Batch, reasons: list[str], attempts: int, origin: str
                       ) -> list[list[tuple[str, str]]]:
        """Each event's dead-letter record headers (key and value are the event's own)."""


@dataclass
class _Rejected:
    ids: list[str]
    reason: str
    parked: bool


class TransactionalParking:
    """The rejected events of one worker's open transaction (see the module docstring).

    Call :meth:`begin` with every transaction (also a replay), :meth:`reject` while producing,
    :meth:`committed` after a commit.
    """

    def __init__(self, producer: TransactionalProducer, queue: TransactionalQueue | None,
                 queue_limit: tuple[int, str] | None, holds: KeyHolds | None, origin: str, metrics: ProcessMetrics,
                 log: Any) -> None:
        """``queue_limit``: the largest dead-letter record and the setting that says so
        (:meth:`~savegress_gw.kafka.topic_limits.TopicLimits.limit` of the dead-letter topic)."""
        self.producer, self.queue, self.queue_limit, self.holds = producer, queue, queue_limit, holds
        self.origin, self.metrics, self.log = origin, metrics, log
        self._pending: list[_Rejected] = []
        self._committed_holds = holds.snapshot() if holds is not None else None
        self._open = False
        """A transaction began and has not committed: a new begin() means it was aborted."""

    @property
    def holding(self) -> bool:
        """Whether events of some key are being parked behind an earlier parked event."""
        return self.holds is not None and len(self.holds) > 0

    def poll(self, now: float) -> None:
        """Let held keys be released once the queue has none of their entries. Not while the open
        transaction has parked events: a scan reads committed entries only, and one that started
        after such a park could release its key before the park is visible."""
        if self.holds is not None and not self._pending:
            self.holds.poll(now)

    def begin(self) -> None:
        """A transaction begins: nothing is pending; after an aborted one, holds are as the last
        commit left them."""
        self._pending = []
        if self._open and self.holds is not None and self._committed_holds is not None:
            self.holds.restore(self._committed_holds)
        self._open = True

    def with_held(self, batch: Batch, rejected: dict[int, str]) -> dict[int, str]:
        """``rejected`` plus, with ``preserve_order``, every event of ``batch`` whose key is held,
        by an earlier batch or by a rejected event before it in ``batch``."""
        if self.holds is None:
            return rejected
        holds, parked = self.holds, {}
        for i, key in enumerate(batch.keys):
            if i in rejected:
                parked[i] = rejected[i]
                holds.hold(key, batch.ids[i])
            elif (blocker := holds.blocker(key)) is not None:
                parked[i] = f"held behind parked event {blocker} (dlq.preserve_order)"
        return parked

    def reject(self, batch: Batch, reasons: dict[int, str]) -> None:
        """Park events ``reasons`` of ``batch`` in the open transaction (or drop them, without a queue).

        Raises :class:`~savegress_gw.exactly_once.producer.TransactionAborted` when the
        transaction failed meanwhile.
        """
        indices = sorted(reasons)
        events = batch.take(indices)
        if self.queue is None:
            self._note(events, [reasons[i] for i in indices], parked=False)
            return
        headers = self.queue.record_headers(events, [reasons[i] for i in indices], 1, self.origin)
        assert self.queue_limit is not None, "a queue comes with its limit"
        limit, setting = self.queue_limit
        for j, i in enumerate(indices):
            size = record_size(events.keys[j], events.payloads[j], headers[j])
            if size > limit:
                self._note(events.take([j]), [f"{reasons[i]}; its dead-letter record of {size} bytes exceeds "
                                              f"{setting} too"], parked=False)
                continue
            try:
                self.producer.produce(self.queue.topic, events.payloads[j], events.keys[j], headers[j])
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None or status_of(err) is not Status.REJECTED:
                    self.producer.abort(f"producing a dead-letter record failed: {describe(exc)}")
                self._note(events.take([j]), [f"{reasons[i]}; the dead-letter topic refused it too: "
                                              f"{describe(exc)}"], parked=False)
            else:
                self._note(events.take([j]), [reasons[i]], parked=True)

    def committed(self) -> None:
        """The transaction committed: count and log what it parked and dropped."""
        for rejected in self._pending:
            n = len(rejected.ids)
            if rejected.parked:
                self.metrics.inc("events_dead_lettered_total", n)
                self.log.warning("events parked in the dead-letter topic, in their transaction", reason=rejected.reason,
                                 events=n, event_ids=rejected.ids[:LOGGED_IDS])
            else:
                self.metrics.inc("events_dropped_total", n, label="rejected")
                self.log.error("events cannot be produced to Kafka and there is no dead-letter topic for them; "
                               "dropped", reason=rejected.reason, events=n, event_ids=rejected.ids[:LOGGED_IDS])
        self._pending, self._open = [], False
        if self.holds is not None:
            self._committed_holds = self.holds.snapshot()

    def _note(self, events: Batch, reasons: list[str], parked: bool) -> None:
        """Remember ``events`` for :meth:`committed`, grouped by reason; hold their keys."""
        by_reason: dict[str, list[str]] = {}
        for event_id, reason in zip(events.ids, reasons):
            by_reason.setdefault(reason, []).append(event_id)
        self._pending.extend(_Rejected(ids, reason, parked) for reason, ids in by_reason.items())
        if parked and self.holds is not None:
            self.holds.parked(events)
