"""The supervisor: spawn the source process and the workers, watch them, stop them.

gunicorn's arbiter at uvicorn's size. Signal handlers only enqueue; the loop waits on the
children's sentinels, then handles signals, drains child messages, reaps, kills stale children
(heartbeat older than ``gateway.heartbeat_timeout``) and respawns. A child that fails to boot
halts the gateway with its reason and exit status 3; a child that keeps crashing halts it too.

Stopping is ordered so that nothing is lost: the source process stops reading and waits until
every event it handed out is acknowledged, then the workers drain what is left and exit.

With ``ha.enabled`` the supervisor joins the cluster first and runs the source process and the
workers only while its node leads (:mod:`savegress_gw.ha`): it starts them when
:class:`~savegress_gw.ha.leadership.Leadership` says so and SIGKILLs them when leadership is lost.

SIGHUP reloads: the profile is read again from the same files, flags and environment. An invalid
one is logged and the gateway goes on with the current one; a valid, changed one makes the
gateway stop in order (as above) and :func:`run_gateway` then re-executes the same command line in
the same process (same PID for the service manager), which starts with the new profile.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable

import multiprocess as mp

from savegress_gw import source_process, worker
from savegress_gw.checkpoint import checkpoint_path
from savegress_gw.deadletter.gauge import DeadLetterGauge
from savegress_gw.deadletter.stores import profile_store
from savegress_gw.errors import EXIT_FAILURE, EXIT_OK, EXIT_WORKER_BOOT_ERROR, GatewayError, HaltSupervisor, ProfileError
from savegress_gw.ha.leadership import START, Leadership
from savegress_gw.ha.metrics import LeadershipCollector
from savegress_gw.ha.raft import RaftNode
from savegress_gw.metrics import MetricsBlock
from savegress_gw.plugins import GatewayPluginManager, Registry
from savegress_gw.profile.model import ProfileBase, Validated
from savegress_gw.ring import Ring
from savegress_gw.runtime import RUNNING, SOURCE_DONE, SOURCE_SLOT, SOURCE_STOPPING, ChildArgs
from savegress_gw.shared import SharedBlock
from savegress_gw.status_server import StatusServer
from savegress_gw.storage.service import storage_sync_for

CRASH_LIMIT = 5
"""Restarts of one child within :data:`CRASH_WINDOW_S` after which the gateway halts."""
CRASH_WINDOW_S = 60.0
DEFAULT_RING_BYTES = 32 * 1024 * 1024


@dataclass
class Child:
    """One supervised process."""

    name: str
    slot: int
    target: Any
    index: int = -1
    process: Any = None
    started_at: float = 0.0
    ready: bool = False
    restarts: deque[float] = field(default_factory=deque)


class Supervisor:
    """Runs one gateway until it is stopped, finished or halted; :meth:`run` returns the exit status."""

    def __init__(self, profile: ProfileBase, profile_data: dict[str, Any], registry: Registry,
                 plugins: GatewayPluginManager, log: Any, reload: Callable[[], Validated] | None = None) -> None:
        """``reload`` reads the profile again (for SIGHUP); without it SIGHUP is ignored with a warning."""
        self.profile, self.profile_data, self.registry, self.log = profile, profile_data, registry, log
        self.plugins = plugins
        self.reload = reload
        self.restart_with_new_profile = False
        """Set by a SIGHUP that found a valid, changed profile: :func:`run_gateway` re-executes."""
        self.ctx = mp.get_context("spawn")
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.alive = True
        self.exit_status = EXIT_OK
        gateway = profile.gateway
        self.heartbeat_timeout = gateway.heartbeat_timeout
        self.boot_timeout = gateway.boot_timeout
        self.metrics = MetricsBlock(gateway.workers + 2, self.ctx)
        self.own_metrics = self.metrics.row(gateway.workers + 1)
        self.heartbeats = self.ctx.RawArray("d", gateway.workers + 1)
        self.messages = self.ctx.Queue()
        self.stop_phase = self.ctx.RawValue("b", RUNNING)
        self.leader_lease = self.ctx.RawValue("d", math.inf)
        self.rings: list[Ring] = []
        self.shared = self._shared_blocks()
        self.children = [Child("source", SOURCE_SLOT, source_process.main)] + [
            Child(f"worker-{i}", i + 1, worker.main, index=i) for i in range(gateway.workers)
        ]
        self.status = StatusServer(profile, self.metrics, self.children) if profile.metrics.enabled else None
        self.dlq_gauge = self._dead_letter_gauge()
        self.storage = storage_sync_for(profile, log, self.status.registry if self.status else None,
                                        active=lambda: self.running)
        self.leadership: Leadership | None = None
        self.running = False
        """The source process and the workers are up (always, unless ``ha.enabled`` and not leading)."""

    def _dead_letter_gauge(self) -> DeadLetterGauge | None:
        """The ``dlq_entries`` gauge on the status server, when there is one and a queue to count."""
        if self.status is None or self.profile.selected("dlq") is None:
            return None
        try:
            store = profile_store(self.profile, self.registry, self.log.bind(component="dlq"))
        except GatewayError:
            return None  # a queue that offers no store cannot be counted
        metrics = self.profile.metrics
        gauge = DeadLetterGauge(store, metrics.prometheus.namespace, metrics.labels, self.log.bind(component="dlq"))
        self.status.registry.register(gauge)
        return gauge

    def _ring_bytes(self) -> int:
        gateway, pool = self.profile.gateway, self.profile.buffer.pool
        if gateway.ring_size:
            return gateway.ring_size
        if pool.enabled:
            return max(pool.max_size * pool.prealloc_size, 4 * 1024 * 1024)
        return DEFAULT_RING_BYTES

    def _shared_blocks(self) -> dict[str, SharedBlock]:
        blocks = {}
        for kind in ("limiter", "backpressure", "compressor", "sink", "source"):
            name = self.profile.selected(kind)
            cls = self.registry.get(kind, name) if name else None
            if cls is not None and cls.shared_slots:
                blocks[kind] = SharedBlock(cls.shared_slots, self.ctx)
        return blocks

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda sig, frame: self.signals.put_nowait(sig))
        try:
            if self.status is not None:
                self.status.start()
            self.log.info("gateway starting", workers=self.profile.gateway.workers, source=self.profile.source.type,
                          output=self.profile.output.type, metrics=self.status.url if self.status else None,
                          ha=self.profile.ha.enabled)
            if self.profile.ha.enabled:
                self.leadership = self._join_cluster()
            else:
                self.start_pipeline()
            if self.storage is not None:
                self.storage.start()
            if self.dlq_gauge is not None:
                self.dlq_gauge.start()
            while self.alive:
                wait([c.process.sentinel for c in self.children if c.process], timeout=0.25)
                self.handle_signals()
                self.handle_messages()
                self.reap_children()
                self.murder_stale()
                self.follow_leadership()
        except HaltSupervisor as halt:
            self.log.error("gateway halted", reason=halt.reason)
            self.exit_status = halt.exit_status
        finally:
            self.stop()
        return self.exit_status

    def start_pipeline(self) -> None:
        """Create the rings and start the source process and the workers."""
        self.rings = [Ring.create(f"sg-{os.getpid()}-{i}-{os.urandom(3).hex()}", self._ring_bytes())
                      for i in range(self.profile.gateway.workers)]
        for child in self.children:
            self.spawn(child)
        self.running = True

    def kill_pipeline(self) -> None:
        """SIGKILL the source process and the workers at once (a leader that lost the cluster must not
        deliver more) and drop the rings; the next leader replays from the replicated checkpoint."""
        for child in self.children:
            if child.process is not None:
                child.process.kill()
        for child in self.children:
            if child.process is not None:
                child.process.join()
                child.process, child.ready = None, False
        for ring in self.rings:
            ring.close()
        self.rings = []
        self.running = False

    def follow_leadership(self) -> None:
        """With ``ha.enabled``: start the pipeline when this node takes the lead, kill it when it loses it."""
        if self.leadership is None:
            return
        action = self.leadership.tick(self.running)
        self.leader_lease.value = self.leadership.confirmed_until
        if action == START:
            self.start_pipeline()
        elif action is not None:
            self.kill_pipeline()

    def _join_cluster(self) -> Leadership:
        cluster, profile = self.profile.ha.cluster, self.profile
        checkpoint_file = checkpoint_path(profile.checkpoint, profile.gateway.id)
        state_dir = Path(cluster.data_dir) if cluster.data_dir else checkpoint_file.with_suffix(".raft")
        node = RaftNode(cluster, state_dir)
        self.log.info("joined the HA cluster; the pipeline runs on the leader only", node=node.name,
                      address=node.address, raft_state=str(state_dir))
        identity = {k: v for k, v in self.profile_data.items() if k not in ("ha", "metrics", "logging")}
        profile_hash = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        leadership = Leadership(node, checkpoint_file, profile_hash,
                                cluster.election_timeout, self.log.bind(component="ha"))
        if self.status is not None:
            self.status.registry.register(LeadershipCollector(leadership, profile.metrics.prometheus.namespace,
                                                              profile.metrics.labels))
        return leadership

    def spawn(self, child: Child) -> None:
        args = ChildArgs(self.profile_data, [r.name for r in self.rings], self.heartbeats, self.metrics,
                         self.messages, self.shared, child.index, os.getpid(), self.stop_phase, self.leader_lease)
        self.heartbeats[child.slot] = 0.0
        child.process = self.ctx.Process(target=child.target, args=(args,), name=f"savegress-gw {child.name}",
                                         daemon=False)
        child.process.start()
        child.started_at = time.monotonic()
        child.ready = False

    def handle_signals(self) -> None:
        while not self.signals.empty():
            signum = self.signals.get_nowait()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.log.info("stopping on signal", signal=signal.Signals(signum).name)
                self.alive = False
            elif signum == signal.SIGHUP:
                self.reload_profile()

    def reload_profile(self) -> None:
        """SIGHUP: stop in order for a restart when the profile changed and is valid; else go on."""
        if self.reload is None:
            self.log.warning("SIGHUP: this gateway was not started from profile files; nothing to reload")
            return
        try:
            validated = self.reload()
        except ProfileError as exc:
            self.log.error("SIGHUP: the profile is invalid; going on with the current one", problems=exc.problems)
            return
        except Exception as exc:  # a reload must never take the running gateway down
            self.log.error("SIGHUP: the profile could not be read; going on with the current one",
                           error=f"{type(exc).__name__}: {exc}")
            return
        if validated.data == self.profile_data:
            self.log.info("SIGHUP: the profile did not change; going on")
            return
        self.log.info("SIGHUP: the profile changed and is valid; stopping in order, then restarting with it")
        self.restart_with_new_profile = True
        self.alive = False

    def handle_messages(self) -> None:
        while True:
            try:
                kind, name, text = self.messages.get_nowait()
            except queue.Empty:
                return
            child = next(c for c in self.children if c.name == name)
            if kind == "boot_error":
                raise HaltSupervisor(f"{name} failed to start: {text}", EXIT_WORKER_BOOT_ERROR)
            if kind == "ready":
                child.ready = child.process is not None  # not a pipeline killed since (ha)
            elif kind == "finished":
                self.log.info("source finished, stopping", detail=text)
                self.alive = False

    def reap_children(self) -> None:
        for child in self.children:
            process = child.process
            if process is None or process.is_alive():
                continue
            process.join()
            code = process.exitcode
            if child.index >= 0:
                info = worker.WorkerInfo(child.index, process.pid, self.profile.gateway.id)
                self.plugins.hook.gw_worker_exited(worker=info, exitcode=code)
            if not self.alive:
                continue  # stopping (perhaps the whole process group got the signal): no respawn
            if code == EXIT_WORKER_BOOT_ERROR:
                self.handle_messages()  # the reason usually arrived just before the exit
                raise HaltSupervisor(f"{child.name} failed to start (exit status {code})", EXIT_WORKER_BOOT_ERROR)
            self.log.warning("child exited, replacing it", child=child.name, exitcode=code)
            self._count_restart(child)
            self.spawn(child)

    def _count_restart(self, child: Child) -> None:
        now = time.monotonic()
        child.restarts.append(now)
        while child.restarts and now - child.restarts[0] > CRASH_WINDOW_S:
            child.restarts.popleft()
        self.own_metrics.inc("worker_restarts_total")
        if len(child.restarts) > CRASH_LIMIT:
            raise HaltSupervisor(f"{child.name} crashed {len(child.restarts)} times within {CRASH_WINDOW_S:.0f}s",
                                 EXIT_FAILURE)

    def murder_stale(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is None or not child.process.is_alive():
                continue
            beat = self.heartbeats[child.slot]
            if beat == 0.0 and now - child.started_at > self.boot_timeout:
                raise HaltSupervisor(f"{child.name} did not finish starting within {self.boot_timeout:g}s",
                                     EXIT_WORKER_BOOT_ERROR)
            if beat and now - beat > self.heartbeat_timeout:
                self.log.warning("child stalled, killing it", child=child.name, silent_s=round(now - beat, 1))
                child.process.kill()

    # ------------------------------------------------------------------ stopping

    def stop(self) -> None:
        """Source first (it waits for its in-flight events), then the workers drain; then clean up."""
        # A halted gateway has a broken child: nothing would settle, so do not wait the full grace period.
        graceful = self.profile.gateway.graceful_timeout if self.exit_status == EXIT_OK else 2.0
        source, workers = self.children[0], self.children[1:]
        self.leader_lease.value = math.inf  # a leader that stops drains what it holds (it still leads)
        self.stop_phase.value = SOURCE_STOPPING
        self._terminate([source], graceful + 5)
        self.stop_phase.value = SOURCE_DONE
        self._terminate(workers, graceful + 5)
        for ring in self.rings:
            ring.close()
        if self.storage is not None:
            self.storage.stop()  # the last backup pass, after the pipeline stopped
        if self.dlq_gauge is not None:
            self.dlq_gauge.stop()
        if self.leadership is not None:
            if self.running and not self.leadership.flush():
                self.log.warning("the last checkpoint was not replicated; the next leader replays from the one before")
            self.leadership.node.close()
        if self.status is not None:
            self.status.stop()
        totals = {name: int(value) for name, value in self.metrics.counter_totals().items() if value}
        self.log.info("gateway stopped", exit_status=self.exit_status, **totals)

    def _terminate(self, children: list[Child], timeout: float) -> None:
        running = [c.process for c in children if c.process is not None and c.process.is_alive()]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + timeout
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                self.log.warning("child did not stop in time, killing it", pid=process.pid)
                process.kill()
                process.join()



def run_gateway(validated: Validated, registry: Registry, plugins: GatewayPluginManager,
                reload: Callable[[], Validated] | None = None) -> int:
    """Configure logging, report the profile's warnings and run a supervisor until it stops; after
    a SIGHUP with a new valid profile, re-execute this process's command line (never returns then)."""
    from savegress_gw.logs import configure_logging

    profile = validated.profile
    log = configure_logging(profile.logging, "supervisor")
    for warning in validated.warnings:
        log.warning("profile", detail=warning)
    supervisor = Supervisor(profile, validated.data, registry, plugins, log, reload)
    status = supervisor.run()
    if supervisor.restart_with_new_profile and status == EXIT_OK:
        log.info("restarting with the new profile", command=sys.orig_argv)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)
    return status
