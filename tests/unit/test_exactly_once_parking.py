"""Exactly-once parking without a broker: record sizes as librdkafka counts them, which events
``preserve_order`` parks behind a rejected one, and holds rolling back with an aborted transaction."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import pytest
import structlog
from confluent_kafka import KafkaException, Producer

from savegress_gw.components import Batch
from savegress_gw.deadletter.holds import KeyHolds
from savegress_gw.exactly_once.parking import TransactionalParking
from savegress_gw.kafka.record_size import record_size
from savegress_gw.metrics import MetricsBlock

LOG = structlog.get_logger()
LIMIT = 2000


def largest_value_librdkafka_takes(key: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """Bisect the largest value ``produce()`` accepts under ``message.max.bytes`` = LIMIT (no broker needed)."""
    producer = Producer({"bootstrap.servers": "127.0.0.1:9", "message.max.bytes": LIMIT, "log_level": 0})
    low, high = 0, LIMIT
    while low < high:
        middle = (low + high + 1) // 2
        try:
            producer.produce("t", b"x" * middle, key, headers=headers)
            low = middle
        except KafkaException:
            high = middle - 1
    producer.purge()
    return low


@pytest.mark.parametrize(("key", "headers"), [
    (None, []),
    (b"users:42", []),
    (b"k" * 300, [("savegress-event-id", b"e" * 36)]),
    (b"users:1", [("savegress-event-id", b"e" * 36), ("savegress-operation", b"INSERT"),
                  ("savegress-table", b"t" * 70), ("savegress-timestamp", b"1795771346296")]),
])
def test_record_size_is_the_size_librdkafka_holds_against_message_max_bytes(
        key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
    largest = largest_value_librdkafka_takes(key, headers)
    assert record_size(key, b"x" * largest, headers) <= LIMIT < record_size(key, b"x" * (largest + 1), headers)


class Parked:
    """The read side of a dead-letter queue: the keys it has committed entries of."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}

    def parked_keys(self) -> dict[str, str]:
        return dict(self.keys)


def at_once(scan: Callable[[], dict[str, str]]) -> "Future[dict[str, str]]":
    """Run a release scan right away (instead of in a thread)."""
    done: Future[dict[str, str]] = Future()
    done.set_result(scan())
    return done


def batch(*keys: str) -> Batch:
    n = len(keys)
    return Batch([b"{}"] * n, list(keys), [f"e{i}" for i in range(n)], ["INSERT"] * n, ["public"] * n,
                 ["users"] * n, [0] * n, [0] * n)


def parking_with_holds(queue: Parked | None = None) -> tuple[TransactionalParking, KeyHolds]:
    holds = KeyHolds(queue or Parked(), LOG, load=False, run=at_once, recheck_s=0.0)
    return TransactionalParking(None, None, None, holds, "gw/worker-0", MetricsBlock(1).row(0), LOG), holds  # type: ignore[arg-type]


def test_preserve_order_parks_every_later_event_of_a_rejected_events_key() -> None:
    parking, holds = parking_with_holds()
    events = batch("a", "b", "a", "c", "a")
    assert parking.with_held(events, {2: "too large"}) == {
        2: "too large", 4: "held behind parked event e2 (dlq.preserve_order)"}
    later = batch("b", "a")
    assert parking.with_held(later, {}) == {1: "held behind parked event e2 (dlq.preserve_order)"}
    assert holds.blocker("a") == "e2" and holds.blocker("b") is None


def test_holds_roll_back_with_an_aborted_transaction_and_stay_after_a_commit() -> None:
    parking, holds = parking_with_holds()
    parking.begin()
    parking.with_held(batch("a", "b"), {0: "too large"})
    parking.begin()  # the transaction aborted: its replay starts from the committed holds
    assert len(holds) == 0
    parking.with_held(batch("a", "b"), {1: "too large"})
    parking.committed()
    parking.begin()
    assert holds.blocker("b") == "e1" and holds.blocker("a") is None


def test_a_key_released_between_transactions_stays_released() -> None:
    queue = Parked()
    parking, holds = parking_with_holds(queue)
    parking.begin()
    parking.with_held(batch("a"), {0: "too large"})
    parking.committed()
    parking.poll(1.0)  # starts a scan: the queue has no entry of "a" (replayed meanwhile)
    parking.poll(2.0)  # takes it in
    assert holds.blocker("a") is None
    parking.begin()
    assert holds.blocker("a") is None, "a commit's snapshot must not bring a released key back"


def test_no_release_is_taken_in_while_the_open_transaction_has_parks() -> None:
    queue = Parked()
    parking, holds = parking_with_holds(queue)
    parking.begin()
    events = batch("a")
    parking.reject(events, parking.with_held(events, {0: "too large"}))  # in the open transaction: not visible yet
    parking.poll(1.0)
    parking.poll(2.0)
    assert holds.blocker("a") == "e0"
