"""``savegress_dlq_entries``: counted in a thread from the queue's store; a failing count is logged
once and the gauge keeps its last value."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from savegress_gw.deadletter.gauge import DeadLetterGauge
from tests.harness.gateway import wait_for


class ScriptedStore:
    """Answers ``count()`` with ``entries``, or raises ``error`` while it is set."""

    location = "scripted queue"

    def __init__(self, entries: int) -> None:
        self.entries, self.error, self.calls = entries, None, 0

    def count(self) -> int:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.entries


class Warnings:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.seen.append(event)


def sample(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, {"gateway": "east"})


def test_the_gauge_counts_keeps_its_last_value_through_failures_and_logs_them_once() -> None:
    store = ScriptedStore(3)
    log = Warnings()
    gauge = DeadLetterGauge(store, "sg", {"gateway": "east"}, log, interval=0.02)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    registry.register(gauge)
    assert sample(registry, "sg_dlq_entries") is None, "no sample before the first count"
    gauge.start()
    try:
        wait_for(lambda: sample(registry, "sg_dlq_entries") == 3, 5, "the first count")
        store.error = OSError("queue unreachable")
        failing_since = store.calls
        wait_for(lambda: store.calls >= failing_since + 3, 5, "three failed counts")
        assert sample(registry, "sg_dlq_entries") == 3, "a failed count keeps the last value"
        store.entries, store.error = 7, None
        wait_for(lambda: sample(registry, "sg_dlq_entries") == 7, 5, "the count after the queue is back")
    finally:
        gauge.stop()
    assert log.seen == ["cannot count the dead-letter queue's entries; the gauge keeps its last value"]
    age = sample(registry, "sg_dlq_count_age_seconds")
    assert age is not None and 0 <= age < 5
