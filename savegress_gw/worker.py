"""A worker process: attach to its ring, build its components, run the pipeline.

Nothing heavy happens before the spawn; in the child: registry → profile → components → open →
``gw_worker_started`` → loop. A failure before the loop starts exits with
:data:`~savegress_gw.errors.EXIT_WORKER_BOOT_ERROR` after reporting the reason, and the supervisor
halts instead of crash-looping. Once the gateway stops its source process, the worker sends what
its batcher holds at once (the source waits for its in-flight events, however long ``batching``
would hold them). SIGTERM drains: every frame in the ring is batched and sent, and the worker
exits once all deliveries settled or ``gateway.graceful_timeout`` passed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from savegress_gw.assembly import instantiate, open_component
from savegress_gw.batching import make_batcher
from savegress_gw.circuit import CircuitBreaker
from savegress_gw.components import Compressor, Context, DeadLetterQueue
from savegress_gw.compressing import MeteredCompressor
from savegress_gw.deadletter.holds import KeyedQueue, KeyHolds
from savegress_gw.errors import EXIT_FAILURE, EXIT_OK, EXIT_WORKER_BOOT_ERROR, GatewayError
from savegress_gw.exactly_once.loop import TransactionalPipeline
from savegress_gw.exactly_once.setup import build_pipeline, wait_for_cluster
from savegress_gw.logs import configure_logging
from savegress_gw.pipeline import Pipeline
from savegress_gw.pitr import ArchiveWriter, archive_dir, bucket_seconds
from savegress_gw.ring import Ring
from savegress_gw.runtime import (RUNNING, SOURCE_DONE, ChildArgs, ChildRuntime, StopRequest, boot_child,
                                  report_boot_error, tune_gc)

IDLE_SLEEP_S = 0.0005


@dataclass(frozen=True)
class WorkerInfo:
    """What worker hooks receive."""

    index: int
    pid: int
    gateway_id: str


def main(args: ChildArgs) -> None:
    """Entry point of a worker process (the target the supervisor spawns)."""
    name = f"worker-{args.index}"
    stop = StopRequest()
    try:
        runtime = boot_child(args, name, args.index + 1)
        log = configure_logging(runtime.profile.logging, name)
        if runtime.profile.exactly_once.enabled:
            pipeline, components = _build_transactional(runtime, log)
        else:
            pipeline, components = _build(runtime, log)
    except Exception as exc:
        report_boot_error(args, name, exc)
        sys.exit(EXIT_WORKER_BOOT_ERROR)
    info = WorkerInfo(args.index, os.getpid(), runtime.profile.gateway.id)
    runtime.plugins.hook.gw_worker_started(worker=info)
    runtime.report("ready", "")
    tune_gc()
    code = EXIT_OK
    try:
        _run(runtime, pipeline, stop, log)
    except Exception:
        log.exception("worker failed")
        code = EXIT_FAILURE
    finally:
        runtime.plugins.hook.gw_worker_stopping(worker=info)
        for component in reversed(components):
            component.close()
        pipeline.ring.close()
    sys.exit(code)


def _build_transactional(runtime: ChildRuntime, log: Any) -> tuple[TransactionalPipeline, list]:
    """The exactly-once pipeline: a transactional producer instead of the sink component, which
    also writes the dead-letter records (the dead-letter queue component only sets up its topic
    and reads it back for ``preserve_order``); the rate limiter, when one is configured."""
    profile = runtime.profile
    ring = Ring.attach(runtime.args.ring_names[runtime.args.index])
    wait_for_cluster(profile, runtime.name, runtime.beat, log)
    opened: list[Any] = []

    def opened_component(kind: str) -> Any:
        component = instantiate(kind, profile, runtime.registry)
        if component is not None:
            open_component(component, Context(process=runtime.name, worker_index=runtime.args.index,
                                              log=log.bind(component=kind), profile=profile,
                                              shared=runtime.args.shared.get(kind)))
            opened.append(component)
        return component

    limiter, dlq = opened_component("limiter"), opened_component("dlq")
    pipeline = build_pipeline(profile, runtime.args.index, ring, runtime.metrics, log.bind(component="exactly-once"),
                              runtime.beat, limiter, dlq)
    pipeline.archive = _archive(runtime, log)
    if pipeline.archive is not None:
        opened.append(pipeline.archive)
    return pipeline, opened


def _build(runtime: ChildRuntime, log: object) -> tuple[Pipeline, list]:
    profile, registry = runtime.profile, runtime.registry
    ring = Ring.attach(runtime.args.ring_names[runtime.args.index])
    compressor = instantiate("compressor", profile, registry)
    limiter = instantiate("limiter", profile, registry)
    sink = instantiate("sink", profile, registry)
    dlq = instantiate("dlq", profile, registry)
    opened = []

    def context(kind: str, **extra: object) -> Context:
        return Context(process=runtime.name, worker_index=runtime.args.index, log=log.bind(component=kind),
                       profile=profile, shared=runtime.args.shared.get(kind), **extra)

    metered: Compressor | None = None
    if compressor is not None:
        open_component(compressor, context("compressor"))
        opened.append(compressor)
        metered = MeteredCompressor(compressor, runtime.metrics)
    if limiter is not None:
        open_component(limiter, context("limiter"))
        opened.append(limiter)
    open_component(sink, context("sink", compressor=metered))
    opened.append(sink)
    retry = profile.retry.model_copy(update=sink.retry_overrides())
    if dlq is not None:
        open_component(dlq, context("dlq", compressor=metered))
        opened.append(dlq)
        retry = profile.dlq.retry_settings(retry)
    archive = _archive(runtime, log)
    if archive is not None:
        opened.append(archive)  # closed first: seals the segment being written
    pipeline = Pipeline(ring, sink, make_batcher(profile.batching), limiter, retry, runtime.metrics,
                        log.bind(component="pipeline"), dlq, origin=f"{profile.gateway.id}/{runtime.name}",
                        breaker=CircuitBreaker(profile.circuit_breaker), event_deadline=_event_deadline(runtime),
                        holds=_holds(profile, dlq, log), max_in_flight=profile.parallel.transaction_parallelism,
                        archive=archive)
    return pipeline, opened


def _archive(runtime: ChildRuntime, log: Any) -> ArchiveWriter | None:
    """This worker's point-in-time archive with ``pitr.enabled``, opened:
    its leftover open segments are sealed and retention is applied."""
    profile = runtime.profile
    pitr = profile.pitr
    if not pitr.enabled:  # also off in a `pitr replay` run
        return None
    segment_size = profile.storage.segment_size or pitr.segment_size
    archive = ArchiveWriter(archive_dir(pitr.storage_dir, profile.gateway.id), runtime.args.index,
                            bucket_seconds(pitr.granularity), int(segment_size), pitr.retention,
                            log.bind(component="pitr"), runtime.metrics)
    archive.open()
    return archive


def _holds(profile: Any, dlq: DeadLetterQueue | None, log: object) -> KeyHolds | None:
    """The held keys with ``dlq.preserve_order``; a ``dlq replay`` run starts holding none."""
    if dlq is None or not profile.dlq.preserve_order:
        return None
    if not isinstance(dlq, KeyedQueue):
        raise GatewayError(f"dlq.preserve_order: the {dlq.name!r} dead-letter queue cannot say which keys it "
                           f"holds; switch preserve_order off or use dlq.type file or kafka")
    return KeyHolds(dlq, log.bind(component="holds"), load=profile.selected("source") != "dlq_replay")


def _event_deadline(runtime: ChildRuntime) -> float | None:
    """The backpressure strategy's event deadline (the strategy itself lives in the source process)."""
    strategy = instantiate("backpressure", runtime.profile, runtime.registry)
    return strategy.event_deadline() if strategy is not None else None


class LeaseWatch:
    """Whether this worker may deliver: with ``ha.enabled`` only while the supervisor's latest
    confirmation of the node's lead holds. Logs when deliveries stop and start again, and counts
    each stop in ``ha_delivery_holds_total``."""

    def __init__(self, runtime: ChildRuntime, log: Any) -> None:
        self.runtime, self.log = runtime, log
        self.held_since: float | None = None

    def holds(self, now: float) -> bool:
        confirmed = self.runtime.lead_confirmed(now)
        if not confirmed and self.held_since is None:
            self.held_since = now
            self.runtime.metrics.inc("ha_delivery_holds_total")
            self.log.warning("the supervisor has not confirmed this node's HA lead in time: holding deliveries")
        elif confirmed and self.held_since is not None:
            self.log.info("HA lead confirmed again: delivering", held_s=round(now - self.held_since, 3))
            self.held_since = None
        return confirmed


def _run(runtime: ChildRuntime, pipeline: Pipeline | TransactionalPipeline, stop: StopRequest, log: Any) -> None:
    graceful = runtime.profile.gateway.graceful_timeout
    archive = pipeline.archive
    lease = LeaseWatch(runtime, log)
    while True:
        now = time.monotonic()
        runtime.beat(now)
        deadline = stop.deadline(now, graceful)
        draining = deadline is not None
        phase = runtime.args.stop_phase.value
        worked = lease.holds(now) and pipeline.step(now, draining=draining or phase != RUNNING)
        if archive is not None:
            archive.tick()  # seals the segment whose bucket ended, also when nothing is delivered
        if draining and ((phase == SOURCE_DONE and pipeline.settled()) or now > deadline):
            pipeline.finish(max(0.0, deadline - now))
            return
        if runtime.orphaned():
            return
        if not worked:
            time.sleep(IDLE_SLEEP_S)
