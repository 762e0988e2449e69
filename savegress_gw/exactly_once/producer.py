"""One transactional producer and librdkafka's error classes, turned into two outcomes.

librdkafka tells every transactional error apart by three flags (``kafka-eos-notes.md`` §2):
*retriable* → call the same API again (``init``/``commit``/``abort`` resume where they were);
*abortable* (``txn_requires_abort``) → abort and send the same records in a new transaction;
*fatal*, or no flag at all → this producer is finished. Here that becomes:

* :class:`TransactionAborted`: the transaction was aborted; nothing of it is visible; replay it.
* :class:`ProducerFenced` (a :class:`~savegress_gw.errors.GatewayError`): the producer is fenced,
  failed fatally, or a commit's outcome stayed unknown past its deadline. The worker must exit
  without acknowledging anything: its replacement's ``init_transactions`` settles the open
  transaction and the re-read checkpoint says what is in Kafka.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from savegress_gw.errors import GatewayError
from savegress_gw.kafka.errors import describe

RETRY_PAUSE_S = 0.2
QUEUE_FULL_POLL_S = 0.05


class TransactionAborted(Exception):
    """The open transaction was aborted (by us, after an abortable error); replay its records."""


class ProducerFenced(GatewayError):
    """The transactional producer cannot go on (fenced, fatal, or an unknown commit outcome)."""


def _error(exc: BaseException) -> KafkaError | None:
    return exc.args[0] if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError) else None


class TransactionalProducer:
    """A librdkafka producer with ``transactional.id``: ``start`` once, then ``begin`` → ``produce``
    … → ``commit`` per transaction. ``timeout_s`` is ``transaction.timeout.ms`` in seconds; calls that
    keep failing retriably give up after twice that.
    """

    def __init__(self, conf: dict[str, Any], timeout_s: float, log: Any) -> None:
        self.conf, self.timeout_s, self.log = conf, timeout_s, log
        self.transactional_id = conf["transactional.id"]
        self._producer: Producer | None = None
        self._fatal: str | None = None

    @property
    def client(self) -> Producer:
        assert self._producer is not None, "start() first"
        return self._producer

    def start(self) -> None:
        """Create the producer and ``init_transactions``: fences every older instance with our id
        and settles (aborts, or finishes committing) its open transaction."""
        self._producer = Producer({**self.conf, "error_cb": self._on_error})
        self._retrying("init_transactions", lambda: self.client.init_transactions(self.timeout_s))

    def begin(self) -> None:
        self._check_fatal()
        try:
            self.client.begin_transaction()
        except KafkaException as exc:
            raise ProducerFenced(f"begin_transaction failed for {self.transactional_id}: {describe(exc)}") from None

    def produce(self, topic: str, value: bytes, key: Any, headers: Any, partition: int = -1) -> None:
        """Queue one record in the open transaction, waiting for room when librdkafka's queue is full.

        A record librdkafka refuses locally (too large, unknown partition) raises ``KafkaException``
        without harming the transaction; a transaction that already failed raises
        :class:`TransactionAborted` after aborting it.
        """
        while True:
            try:
                self.client.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:
                self.client.poll(QUEUE_FULL_POLL_S)
            except KafkaException as exc:
                err = _error(exc)
                if err is not None and err.code() in (KafkaError._STATE, KafkaError._FATAL):
                    self._check_fatal()
                    self.abort(f"produce refused: {describe(exc)}")
                raise

    def commit(self) -> None:
        """Commit the open transaction; on success every record of it is visible to ``read_committed``.

        Raises :class:`TransactionAborted` (after aborting) or :class:`ProducerFenced`. A commit that
        timed out is retried (it resumes and reports the real outcome), never replaced by a new
        transaction with the same records.
        """
        deadline = time.monotonic() + 2 * self.timeout_s
        while True:
            try:
                self.client.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                err = _error(exc)
                if err is None or err.fatal() or self._fatal:
                    raise ProducerFenced(f"commit of {self.transactional_id} failed: {self._fatal or describe(exc)}"
                                         ) from None
                if err.txn_requires_abort():
                    self.abort(f"commit failed: {describe(exc)}")
                if not err.retriable() or time.monotonic() > deadline:
                    raise ProducerFenced(f"commit of {self.transactional_id} has no known outcome: {describe(exc)}"
                                         ) from None
                self.log.warning("transaction commit not confirmed yet, retrying it", error=describe(exc))
                time.sleep(RETRY_PAUSE_S)

    def abort(self, reason: str) -> None:
        """Abort the open transaction and raise :class:`TransactionAborted` naming ``reason``."""
        self._retrying("abort_transaction", lambda: self.client.abort_transaction(self.timeout_s))
        raise TransactionAborted(reason)

    def poll(self, timeout_s: float = 0.0) -> None:
        if self._producer is not None:
            self._producer.poll(timeout_s)

    def _retrying(self, name: str, call: Callable[[], None]) -> None:
        deadline = time.monotonic() + 2 * self.timeout_s
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                err = _error(exc)
                if err is None or err.fatal() or not err.retriable() or time.monotonic() > deadline:
                    raise ProducerFenced(f"{name} failed for {self.transactional_id}: {self._fatal or describe(exc)}"
                                         ) from None
                self.log.warning(f"{name} failed, retrying", error=describe(exc))
                time.sleep(RETRY_PAUSE_S)

    def _check_fatal(self) -> None:
        if self._fatal:
            raise ProducerFenced(f"producer {self.transactional_id} failed fatally: {self._fatal}")

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback; never raises (a raise would replace a commit's result)."""
        if err.fatal():
            self._fatal = f"{err.name()}: {err.str()}"
