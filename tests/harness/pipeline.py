"""A worker pipeline on a real ring with scripted in-memory sinks and dead-letter queues.

Time is passed explicitly to ``Pipeline.step(now)``: retries become due by moving ``now``, never by
sleeping.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import structlog
from prometheus_client.registry import CollectorRegistry

from savegress_gw.batching import Batcher
from savegress_gw.components import Batch, ComponentConfig, DeadLetterQueue, Limiter, Outcome, Sink, Status
from savegress_gw.deadletter.holds import KeyHolds
from savegress_gw.metrics import GatewayCollector, MetricsBlock
from savegress_gw.pipeline import Pipeline, encode_frame
from savegress_gw.profile.settings import RetrySettings
from savegress_gw.ring import Ring

RETRY = RetrySettings(initial_delay=0.001, max_delay=0.01, multiplier=2.0, jitter=0.0)

Script = Callable[[Batch], Outcome]


class MemorySink(Sink):
    """Records every send; outcomes follow a per-send script; optionally reports from ``poll``.

    ``script[n]`` (1-based send number) gives the outcome of that send, default DELIVERED.
    Asynchronous: sends stay pending until ``complete(i)`` or, with ``auto`` set, until ``poll``
    reports them (newest first with ``auto="lifo"``, to deliver out of order).
    """

    name = "memory"

    def __init__(self, script: dict[int, Script] | None = None, asynchronous: bool = False,
                 auto: str | None = None) -> None:
        super().__init__(ComponentConfig())
        self.script = dict(script or {})
        self.asynchronous = asynchronous
        self.auto = auto
        self.sends: list[list[str]] = []
        self.delivered: list[str] = []
        self.pending: list[tuple[Batch, Callable[[Outcome], None], Outcome]] = []

    def send(self, batch: Batch, done: Callable[[Outcome], None]) -> None:
        self.sends.append(list(batch.ids))
        script = self.script.pop(len(self.sends), None)
        outcome = script(batch) if script else Outcome(Status.DELIVERED)
        if self.asynchronous:
            self.pending.append((batch, done, outcome))
        else:
            self._report(batch, done, outcome)

    def _report(self, batch: Batch, done: Callable[[Outcome], None], outcome: Outcome) -> None:
        if outcome.status is Status.DELIVERED:
            failed = set(outcome.failed)
            self.delivered.extend(i for n, i in enumerate(batch.ids) if n not in failed)
        done(outcome)

    def complete(self, index: int) -> None:
        """Report the ``index``-th pending send (in send order)."""
        self._report(*self.pending.pop(index))

    def poll(self, timeout_s: float) -> None:
        if self.auto == "lifo":
            while self.pending:
                self.complete(-1)
        elif self.auto == "fifo":
            while self.pending:
                self.complete(0)


def errored(reason: str = "broker unavailable", retry_after_s: float | None = None) -> Script:
    return lambda batch: Outcome(Status.ERRORED, reason, retry_after_s=retry_after_s)


def rejected(reason: str = "poison") -> Script:
    return lambda batch: Outcome(Status.REJECTED, reason)


def partly(failed: list[int], status: Status) -> Script:
    return lambda batch: Outcome(Status.DELIVERED, "some failed", failed=list(failed), failed_status=status)


def events(start: int, count: int, keys: list[str] | None = None) -> Batch:
    """Events ``e<start>``.. with key ``t:e<n>`` each, or the given ``keys``."""
    ids = [f"e{i}" for i in range(start, start + count)]
    now = time.time_ns()
    return Batch(
        payloads=[b'{"id":"%s"}' % i.encode() for i in ids], keys=keys or [f"t:{i}" for i in ids], ids=ids,
        operations=["INSERT"] * count, schemas=["public"] * count, tables=["t"] * count,
        timestamps_ms=[now // 1_000_000] * count, ingest_ns=[now] * count,
    )


def ids(start: int, stop: int) -> list[str]:
    return [f"e{i}" for i in range(start, stop)]


class World:
    """A ring, a pipeline on it and its metrics; ``write`` frames, ``step`` at an explicit time."""

    def __init__(self, sink: MemorySink, max_size: int = 4, max_wait: float = 60.0,
                 limiter: Limiter | None = None, dlq: DeadLetterQueue | None = None,
                 retry: RetrySettings = RETRY, holds: KeyHolds | None = None,
                 max_in_flight: int | None = None) -> None:
        self.ring = Ring.create(f"sgw-test-{uuid.uuid4().hex[:12]}", 1 << 16)
        self.sink = sink
        self.block = MetricsBlock(1)
        self.pipeline = Pipeline(self.ring, sink, Batcher(max_size, max_wait), limiter, retry, self.block.row(0),
                                 structlog.get_logger(), dlq, origin="gw/worker-0", holds=holds,
                                 max_in_flight=max_in_flight)
        self.frame_ends: list[int] = []
        self.written = 0

    def write(self, count: int, keys: list[str] | None = None) -> None:
        self.ring.write(encode_frame(events(self.written, count, keys)))
        self.written += count
        self.frame_ends.append(self.ring.head)

    def step(self, now: float, times: int = 1, draining: bool = False) -> None:
        for _ in range(times):
            self.pipeline.step(now, draining)

    def run_until_settled(self, start: float = 100.0, limit: int = 1000) -> float:
        now = start
        for _ in range(limit):
            self.pipeline.step(now, draining=True)
            if self.pipeline.settled() and self.ring.used == 0:
                return now
            now += 1.0
        raise AssertionError("the pipeline did not settle")

    def metric(self, name: str, **labels: str) -> float:
        registry = CollectorRegistry()
        registry.register(GatewayCollector(self.block))
        value = registry.get_sample_value(f"savegress_{name}", labels)
        assert value is not None, name
        return value

    def close(self) -> None:
        self.ring.close()


class MemoryDeadLetterQueue(DeadLetterQueue):
    """Parks in a list; fails the first ``failures`` puts like a dead-letter store that is down.

    ``parked_keys`` answers from the live entries (``keys``, event id → key); ``remove`` takes
    entries out as a replay or purge would.
    """

    name = "memory"

    def __init__(self, failures: int = 0) -> None:
        super().__init__(DeadLetterQueue.Config())
        self.parked: list[tuple[list[str], str, int, str]] = []
        self.keys: dict[str, str] = {}
        self.failures = failures

    def put(self, batch: Batch, reason: str, attempts: int, origin: str) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("dead-letter store unavailable")
        self.parked.append((list(batch.ids), reason, attempts, origin))
        self.keys.update(zip(batch.ids, batch.keys))

    def parked_keys(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        for event_id, key in self.keys.items():
            keys.setdefault(key, event_id)
        return keys

    def remove(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            del self.keys[event_id]
