"""``<ns>_dlq_entries``: how many entries the profile's dead-letter queue holds right now.

A thread of the supervisor asks the queue's store (:func:`~savegress_gw.deadletter.stores.profile_store`:
the file queue's segment index, or the Kafka topic with its removal markers) every
:data:`INTERVAL_S`, the first time one interval after start, and keeps the answer; a scrape reads
the last one (no sample before the first count). Replays and purges by the
``dlq`` commands therefore show within one interval. A failed count is logged (once until a count
succeeds again) and the gauge keeps its last value; ``<ns>_dlq_count_age_seconds`` says how old it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from savegress_gw.deadletter.stores import EntryStore

INTERVAL_S = 10.0


class DeadLetterGauge(Collector):
    """Counts ``store``'s entries every ``interval`` seconds in a thread, between :meth:`start` and :meth:`stop`."""

    def __init__(self, store: EntryStore, namespace: str, labels: dict[str, str], log: Any,
                 interval: float = INTERVAL_S) -> None:
        self.store, self.namespace, self.log, self.interval = store, namespace, log, interval
        self.names, self.values = list(labels), list(labels.values())
        self.entries: int | None = None
        self.counted_at: float | None = None
        self._failing = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlq-gauge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; a count still running (a Kafka queue that is unreachable) is not
        waited for beyond a second: the thread is a daemon and dies with the gateway."""
        self._stopping.set()
        self._thread.join(1.0)

    def _count(self) -> None:
        try:
            self.entries = self.store.count()
        except Exception as exc:  # a queue that cannot be read must not stop the gateway
            if not self._failing:
                self.log.warning("cannot count the dead-letter queue's entries; the gauge keeps its last value",
                                 location=self.store.location, error=f"{type(exc).__name__}: {exc}")
            self._failing = True
            return
        self.counted_at = time.monotonic()
        self._failing = False

    def collect(self) -> Iterator[Any]:
        entries = GaugeMetricFamily(f"{self.namespace}_dlq_entries",
                                    "Entries in the dead-letter queue (counted every few seconds).", labels=self.names)
        age = GaugeMetricFamily(f"{self.namespace}_dlq_count_age_seconds",
                                "Seconds since the dead-letter queue was last counted.", labels=self.names)
        if self.entries is not None and self.counted_at is not None:
            entries.add_metric(self.values, self.entries)
            age.add_metric(self.values, time.monotonic() - self.counted_at)
        yield entries
        yield age

    def _run(self) -> None:
        # The first count after one interval: by then the workers have created a Kafka queue's topic.
        while not self._stopping.wait(self.interval):
            self._count()
