"""The worker's hot loop: ring frames → batches → rate limit → sink → acknowledgements.

Bookkeeping is by event index in the worker's stream: every event read from the ring gets the
next index, every batch covers a contiguous index range, and a frame is acknowledged in the ring
once every index up to its last event is delivered or parked in the dead-letter queue. Sends
complete out of order; acknowledgements never do. A batch that failed transiently is retried with
backoff before any newer batch is sent, so per-key order holds through retries.

Parking: events the sink REJECTED, and events whose retries are exhausted, go to the dead-letter
queue with the reason. Without one, rejected events are dropped (counted, logged by id) and
transient failures are retried forever: nothing is lost silently. If the dead-letter queue itself
fails, the events wait and the parking is retried.

Holding (``dlq.preserve_order``, with :class:`~savegress_gw.deadletter.holds.KeyHolds`): every
event is checked against the held keys right before it is handed to the sink, first time or
retry, in stream order; an event of a held key is parked behind the event its key is held
behind instead of being sent (if that parking fails, its batch waits and is tried again). Events
already handed to the sink when an earlier event of their key fails are not called back: those
in the same batch as a partly delivered send, or in flight to an asynchronous sink.

Archiving (``pitr.enabled``, :class:`~savegress_gw.pitr.writer.ArchiveWriter`): the delivered
events of every settled send (all of a DELIVERED batch, the indices not in ``failed`` of a partial
one; never parked or dropped events) are appended to the archive, one write per send, before the
frames are acknowledged.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import msgpack

from savegress_gw.batching import Batcher
from savegress_gw.circuit import CircuitBreaker, State
from savegress_gw.components import Batch, DeadLetterQueue, Limiter, Outcome, Sink, Status
from savegress_gw.deadletter.holds import KeyHolds
from savegress_gw.metrics import ProcessMetrics
from savegress_gw.pitr.writer import ArchiveWriter
from savegress_gw.profile.settings import RetrySettings
from savegress_gw.retry import Backoff
from savegress_gw.ring import Ring

LATENCY_SAMPLES = 8
"""Events per batch whose latency is measured; each stands for its share of the batch."""
READ_EVENTS = 2048
"""A step stops reading frames once it has this many events, and sends them: a worker that fell
behind would otherwise copy and decode its whole backlog (up to tens of MB) before sending any of
it, and the events would have left the CPU caches by the time they are sent."""


def encode_frame(batch: Batch) -> bytes:
    return msgpack.packb(batch.to_columns(), use_bin_type=True)


def decode_frame(payload: bytes | memoryview) -> Batch:
    return Batch.from_columns(msgpack.unpackb(payload, raw=False))


@dataclass
class _Send:
    """A batch handed to the sink and not yet settled."""

    start: int
    end: int
    batch: Batch
    backoff: Backoff
    due: float = 0.0


class Pipeline:
    """One worker's pipeline. Call :meth:`step` from the work loop until :meth:`settled`."""

    def __init__(self, ring: Ring, sink: Sink, batcher: Batcher, limiter: Limiter | None, retry: RetrySettings,
                 metrics: ProcessMetrics, log: object, dlq: DeadLetterQueue | None = None,
                 origin: str = "", breaker: CircuitBreaker | None = None,
                 event_deadline: float | None = None, holds: KeyHolds | None = None,
                 max_in_flight: int | None = None, archive: ArchiveWriter | None = None) -> None:
        self.ring, self.sink, self.batcher, self.limiter = ring, sink, batcher, limiter
        self.archive = archive
        """``pitr.enabled``: delivered events are appended here before their frames are acknowledged."""
        self.max_in_flight = max_in_flight
        """Most sends handed to the sink and not yet settled (``parallel.transaction_parallelism``); None: no bound."""
        self.retry_settings, self.metrics, self.log = retry, metrics, log
        self.dlq, self.origin, self.breaker, self.holds = dlq, origin, breaker, holds
        self.event_deadline_ns = None if event_deadline is None else int(event_deadline * 1e9)
        self.read_index = 0
        self.sent_index = 0
        self.delivered_upto = 0
        self._frames: deque[tuple[int, int]] = deque()  # (end index, ring offset after the frame)
        self._done: dict[int, int] = {}  # settled ranges start → end, waiting for the ones before
        self._outcomes: deque[tuple[_Send, Outcome]] = deque()
        self._retries: list[_Send] = []
        self._held: Batch | None = None  # taken from the batcher, waiting for the rate limiter
        self._held_until = 0.0
        self._inflight = 0

    # ------------------------------------------------------------------ the loop body

    def step(self, now: float, draining: bool = False) -> bool:
        """Do one round of work; return True if anything happened (else the caller may idle)."""
        if self.holds is not None:
            self.holds.poll(now)
        worked = self._read(now)
        worked |= self._send_retries(now)
        if not self._retries:
            worked |= self._send_new(now, force=draining)
        self.sink.poll(0)
        worked |= self._settle(now)
        return worked

    def finish(self, timeout_s: float) -> None:
        """Last round before the worker exits: wait up to ``timeout_s`` for deliveries, settle them."""
        self.sink.flush(timeout_s)
        self.step(time.monotonic(), draining=True)

    def settled(self) -> bool:
        """Nothing unread, pending, held, in flight or waiting for a retry."""
        return not (self.ring.unread or len(self.batcher) or self._held or self._inflight or self._retries)

    def idle_deadline(self) -> float | None:
        """The next moment something becomes due without new input (batch timeout or retry)."""
        deadlines = [s.due for s in self._retries]
        if self.breaker is not None and self.breaker.state is State.OPEN:
            deadlines.append(self.breaker.reopens_at())
        if (d := self.batcher.next_deadline()) is not None:
            deadlines.append(d)
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------------ stages

    def _read(self, now: float) -> bool:
        """Read and decode frames until :data:`READ_EVENTS` events or the ring has no more."""
        start, read = self.read_index, False
        while self.read_index - start < READ_EVENTS and (frames := self.ring.read_decoded(decode_frame)):
            (batch, end), read = frames[0], True
            self.batcher.add(batch, now)
            self.read_index += len(batch)
            self._frames.append((self.read_index, end))
        return read

    def _send_new(self, now: float, force: bool) -> bool:
        worked = False
        while self._room_in_flight() and not self._failure_reported() and self._breaker_allows(now):
            batch = self._held or self.batcher.take(now, force=force)
            if batch is None:
                return worked
            if self.limiter is not None:
                wait = self._held_until - now if self._held is not None else 0.0
                if wait <= 0:
                    wait = self.limiter.acquire(len(batch))
                if wait > 0:
                    self._held, self._held_until = batch, now + wait
                    return worked
            self._held = None
            start = self.sent_index
            self.sent_index += len(batch)
            worked = True
            if self.event_deadline_ns is not None:
                batch = self._set_aside_expired(batch, start)
                if not batch:
                    continue
            self._dispatch(_Send(start, self.sent_index, batch, Backoff(self.retry_settings)), now)
            if self._retries:  # held events could not be parked: newer batches wait behind them
                return worked
        return worked

    def _set_aside_expired(self, batch: Batch, start: int) -> Batch:
        """Park the events that waited longer than the deadline; return the rest of ``batch``.

        If every event expired the whole range is settled here and the empty batch is returned.
        """
        oldest_allowed = time.time_ns() - self.event_deadline_ns
        expired = [i for i, ingest in enumerate(batch.ingest_ns) if ingest < oldest_allowed]
        if not expired:
            return batch
        reason = f"deadline exceeded: waited longer than {self.event_deadline_ns / 1e9:g}s in the gateway"
        if not self._park(batch.take(expired), reason, 0, drop_label="deadline"):
            return batch  # the dead-letter queue is down: send them late rather than lose them
        if len(expired) == len(batch):
            self._complete(start, self.sent_index)
            self._acknowledge()
            return Batch.empty()
        keep = sorted(set(range(len(batch))) - set(expired))
        return batch.take(keep)

    def _failure_reported(self) -> bool:
        """A send already reported a failure (a synchronous sink does so inside ``send``): newer
        batches must wait until it is retried (or, holding keys, parked), or they would overtake it."""
        for _, o in self._outcomes:
            if o.status is Status.ERRORED or (o.failed and o.failed_status is Status.ERRORED):
                return True
            if self.holds is not None and (o.status is Status.REJECTED or o.failed):
                return True
        return False

    def _send_retries(self, now: float) -> bool:
        """Re-send failed batches in stream order; a later one never goes before an earlier one."""
        self._retries.sort(key=lambda send: send.start)
        sent = 0
        while self._retries and self._retries[0].due <= now and self._room_in_flight() and self._breaker_allows(now):
            self._dispatch(self._retries.pop(0), now)
            sent += 1
        return bool(sent)

    def _room_in_flight(self) -> bool:
        """Fewer sends than ``max_in_flight`` are with the sink (one that reported is no longer)."""
        return self.max_in_flight is None or self._inflight - len(self._outcomes) < self.max_in_flight

    def _breaker_allows(self, now: float) -> bool:
        if self.breaker is None:
            return True
        before = self.breaker.state
        allowed = self.breaker.allow(now)  # an open breaker turns half-open here once its timeout ran out
        self._breaker_changed(before, now, "")
        return allowed

    def _breaker_record(self, outcome: Outcome, now: float) -> None:
        """Feed the breaker: transient failures count against the sink, rejections do not."""
        if self.breaker is None:
            return
        before = self.breaker.state
        transient = outcome.status is Status.ERRORED or (outcome.failed and outcome.failed_status is Status.ERRORED)
        (self.breaker.failed if transient else self.breaker.succeeded)(now)
        self._breaker_changed(before, now, outcome.reason)

    def _breaker_changed(self, before: State, now: float, reason: str) -> None:
        """Export and log a change of the breaker's state."""
        state = self.breaker.state
        if state is before:
            return
        self.metrics.set("circuit_breaker_state", float(state))
        log = self.log.warning if state is State.OPEN else self.log.info
        log("circuit breaker " + state.name.lower().replace("_", "-"), reason=reason or None,
            reopens_in_s=round(self.breaker.reopens_at() - now, 3) if state is State.OPEN else None)

    def _dispatch(self, send: _Send, now: float) -> None:
        """Send ``send`` after parking its events of held keys (see the module docstring)."""
        if self.holds is not None and len(self.holds):
            behind: dict[str, list[int]] = {}
            for i, key in enumerate(send.batch.keys):
                if (blocker := self.holds.blocker(key)) is not None:
                    behind.setdefault(blocker, []).append(i)
            parked: set[int] = set()
            for blocker, indices in behind.items():
                if not self._park(send.batch.take(indices), f"held behind parked event {blocker} "
                                  f"(dlq.preserve_order)", 0):
                    break
                parked.update(indices)
            if len(parked) == len(send.batch):
                self._complete(send.start, send.end)
                self._acknowledge()
                return
            if parked:
                send.batch = send.batch.take([i for i in range(len(send.batch)) if i not in parked])
            if len(parked) < sum(map(len, behind.values())):  # the dead-letter queue failed: try again later
                send.due = now + send.backoff.next_delay()
                self._retries.append(send)
                return
        self._send(send)

    def _send(self, send: _Send) -> None:
        if self.breaker is not None:
            self.breaker.sending()
        self._inflight += 1
        self.metrics.inc("batches_sent_total")
        try:
            self.sink.send(send.batch, lambda outcome, send=send: self._outcomes.append((send, outcome)))
        except Exception as exc:  # a sink that raises instead of reporting: treat as a transient failure
            self._outcomes.append((send, Outcome(Status.ERRORED, f"{type(exc).__name__}: {exc}")))

    def _settle(self, now: float) -> bool:
        worked = bool(self._outcomes)
        while self._outcomes:
            send, outcome = self._outcomes.popleft()
            self._inflight -= 1
            self._breaker_record(outcome, now)
            if outcome.status is Status.DELIVERED and not outcome.failed:
                self._delivered(send.batch, now)
                self._complete(send.start, send.end)
                continue
            failed, status = self._failed_part(send.batch, outcome)
            delivered = len(send.batch) - len(failed)
            if delivered:
                self._delivered(send.batch.take(sorted(set(range(len(send.batch))) - set(outcome.failed))), now)
            self.metrics.inc("sink_errors_total")
            send.backoff.failed()
            if status is Status.REJECTED or (self.dlq is not None and send.backoff.exhausted):
                if self._park(failed, outcome.reason, send.backoff.attempts):
                    self._complete(send.start, send.end)
                    continue
            delay = send.backoff.next_delay(outcome.retry_after_s)
            self.log.warning("sink send failed, retrying", reason=outcome.reason, events=len(failed),
                             attempt=send.backoff.attempts, retry_in_s=round(delay, 3))
            send.batch, send.due = failed, now + delay
            self._retries.append(send)
        self._acknowledge()
        return worked

    def _park(self, batch: Batch, reason: str, attempts: int, drop_label: str = "rejected") -> bool:
        """Put ``batch`` in the dead-letter queue (or drop it, without one); False if that failed."""
        if self.dlq is None:
            self.metrics.inc("events_dropped_total", len(batch), label=drop_label)
            self.log.error("sink rejected events; no dead-letter queue is configured, dropping them",
                           reason=reason, attempts=attempts, events=len(batch), event_ids=batch.ids[:20])
            return True
        try:
            self.dlq.put(batch, reason, attempts, self.origin)
        except Exception as exc:  # the DLQ is down too: keep the events, retry later
            self.log.error("dead-letter queue failed; the events wait and parking is retried",
                           error=f"{type(exc).__name__}: {exc}", events=len(batch))
            return False
        self.metrics.inc("events_dead_lettered_total", len(batch))
        if self.holds is not None:
            self.holds.parked(batch)
        self.log.warning("events parked in the dead-letter queue", reason=reason, attempts=attempts,
                         events=len(batch), event_ids=batch.ids[:20])
        return True

    @staticmethod
    def _failed_part(batch: Batch, outcome: Outcome) -> tuple[Batch, Status]:
        if outcome.failed:
            return batch.take(outcome.failed), outcome.failed_status
        return batch, outcome.status

    def _delivered(self, batch: Batch, now: float) -> None:
        if self.archive is not None:  # before _acknowledge: a crash can archive twice, never miss
            self.archive.append(batch.payloads)
        self.metrics.inc("events_processed_total", len(batch))
        n = len(batch)
        step = max(1, n // LATENCY_SAMPLES)
        now_ns = time.time_ns()
        worst = 0.0
        samples = batch.ingest_ns[::step]
        for ingest in samples:
            latency = (now_ns - ingest) / 1e9
            worst = max(worst, latency)
            self.metrics.observe("event_latency_histogram_seconds", latency, n / len(samples))
        if self.limiter is not None:
            self.limiter.observe_latency(worst)
        self.batcher.observe_latency(worst, now)

    def _complete(self, start: int, end: int) -> None:
        self._done[start] = end
        while self.delivered_upto in self._done:
            self.delivered_upto = self._done.pop(self.delivered_upto)

    def _acknowledge(self) -> None:
        count = 0
        offset = 0
        while self._frames and self._frames[0][0] <= self.delivered_upto:
            _, offset = self._frames.popleft()
            count += 1
        if count:
            self.ring.ack(offset, count)
