"""The supervisor's backup thread and its metrics.

:class:`BackgroundSync` runs :meth:`Syncer.sync_once` in a daemon thread: once at start, then
every ``storage.<backend>.sync_interval``, and once more when stopped (a clean shutdown, after the
pipeline stopped, so the last snapshot and sealed segment are included). It never stops or slows
the pipeline: it runs in the supervisor process beside the arbiter loop, every failure is logged
(backend, bucket or path, error), counted and retried on the next interval, and :meth:`stop`
waits at most ``final_timeout`` for the last pass.

Metrics (:class:`StorageCollector`, registered on the status server's registry, so on
``/metrics`` with the profile's namespace and constant labels, and label ``backend``):
``<ns>_storage_syncs_total``, ``<ns>_storage_sync_failures_total``,
``<ns>_storage_uploaded_files_total``, ``<ns>_storage_uploaded_bytes_total``,
``<ns>_storage_deleted_files_total`` and ``<ns>_storage_last_success_age_seconds`` (seconds since
the last successful pass; since the thread started while none succeeded yet).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from savegress_gw.storage.layout import backend_for, roots_for
from savegress_gw.storage.syncer import SyncError, Syncer

FINAL_SYNC_TIMEOUT_S = 30.0
"""How long a stopping gateway waits for the last pass (and a pass still running)."""


class SyncStats:
    """Counters of the background passes (written by the sync thread only)."""

    def __init__(self) -> None:
        self.syncs = 0
        self.failures = 0
        self.uploaded_files = 0
        self.uploaded_bytes = 0
        self.deleted_files = 0
        self.started = time.monotonic()
        self.last_success: float | None = None
        self.last_error: str | None = None

    def last_success_age(self) -> float:
        return time.monotonic() - (self.last_success if self.last_success is not None else self.started)


class BackgroundSync:
    """Runs a :class:`Syncer` every ``interval`` seconds in a thread until :meth:`stop`."""

    def __init__(self, syncer: Syncer, interval: float, log: Any, active: Callable[[], bool] = lambda: True,
                 final_timeout: float = FINAL_SYNC_TIMEOUT_S) -> None:
        """``active`` says whether to sync now (with ``ha.enabled``: while this node runs the
        pipeline); a pass skipped for it counts as nothing."""
        self.syncer = syncer
        self.interval = interval
        self.log = log
        self.active = active
        self.final_timeout = final_timeout
        self.stats = SyncStats()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storage-sync", daemon=True)

    def start(self) -> None:
        backend = self.syncer.backend
        self.log.info("backup storage syncing", backend=backend.name, location=backend.location,
                      interval_s=self.interval, roots=[str(r.local_dir) for r in self.syncer.enabled_roots])
        if not self.syncer.enabled_roots:
            self.log.warning("backup storage has nothing to back up: neither periodic snapshots "
                             "(snapshot.interval) nor pitr are enabled", backend=backend.name)
        self._thread.start()

    def stop(self) -> None:
        """Ask for the last pass and wait for it up to ``final_timeout`` seconds."""
        if not self._thread.is_alive():
            return
        self._stopping.set()
        self._thread.join(self.final_timeout)
        if self._thread.is_alive():
            self.log.warning("the last backup sync did not finish in time; the next start uploads the rest",
                             backend=self.syncer.backend.name, location=self.syncer.backend.location,
                             timeout_s=self.final_timeout)

    def _run(self) -> None:
        delay = 0.0
        while True:
            stopping = self._stopping.wait(delay)
            started = time.monotonic()
            if self.active():
                self.sync()
            if stopping:
                return
            delay = max(0.0, self.interval - (time.monotonic() - started))

    def sync(self) -> bool:
        """One pass, logged and counted; True when it succeeded. Never raises."""
        backend, stats = self.syncer.backend, self.stats
        stats.syncs += 1
        try:
            result = self.syncer.sync_once()
        except Exception as exc:  # noqa: BLE001 - whatever breaks, the thread goes on
            stats.failures += 1
            stats.last_error = str(exc)
            partial = exc.partial if isinstance(exc, SyncError) else None
            if partial is not None:
                stats.uploaded_files += partial.uploaded
                stats.uploaded_bytes += partial.uploaded_bytes
                stats.deleted_files += partial.deleted
            self.log.error("backup sync failed; retrying at the next interval", backend=backend.name,
                           location=backend.location, error=str(exc), failures=stats.failures,
                           retry_in_s=self.interval)
            return False
        stats.uploaded_files += result.uploaded
        stats.uploaded_bytes += result.uploaded_bytes
        stats.deleted_files += result.deleted
        stats.last_success, stats.last_error = time.monotonic(), None
        if result.uploaded or result.deleted or result.vanished:
            self.log.info("backup synced", backend=backend.name, location=backend.location,
                          uploaded=result.uploaded, uploaded_bytes=result.uploaded_bytes, deleted=result.deleted)
        return True


class StorageCollector(Collector):
    """The backup metrics of one :class:`BackgroundSync` as Prometheus families."""

    def __init__(self, service: BackgroundSync, namespace: str, labels: dict[str, str]) -> None:
        self.service = service
        self.namespace = namespace
        self.labels = dict(labels)

    def collect(self) -> Iterator[Any]:
        stats = self.service.stats
        names = list(self.labels) + ["backend"]
        values = list(self.labels.values()) + [self.service.syncer.backend.name]
        for name, help_text, value in (
            ("storage_syncs", "Backup sync passes run.", stats.syncs),
            ("storage_sync_failures", "Backup sync passes that failed (retried at the next interval).",
             stats.failures),
            ("storage_uploaded_files", "Files uploaded to backup storage.", stats.uploaded_files),
            ("storage_uploaded_bytes", "Bytes uploaded to backup storage.", stats.uploaded_bytes),
            ("storage_deleted_files", "Backup objects deleted after local retention removed their file.",
             stats.deleted_files),
        ):
            family = CounterMetricFamily(f"{self.namespace}_{name}", help_text, labels=names)
            family.add_metric(values, value)
            yield family
        age = GaugeMetricFamily(f"{self.namespace}_storage_last_success_age_seconds",
                                "Seconds since the last successful backup sync (since start if none yet).",
                                labels=names)
        age.add_metric(values, stats.last_success_age())
        yield age


def storage_sync_for(profile: Any, log: Any, registry: Any = None,
                       active: Callable[[], bool] = lambda: True) -> BackgroundSync | None:
    """The backup thread of a validated profile, not started yet; None for ``storage.backend: none``.
    Its metrics go on ``registry`` (the status server's) when given."""
    backend = backend_for(profile.storage)
    if backend is None:
        return None
    service = BackgroundSync(Syncer(backend, roots_for(profile)), profile.storage.sync_interval,
                             log.bind(component="storage"), active)
    if registry is not None:
        registry.register(StorageCollector(service, profile.metrics.prometheus.namespace, profile.metrics.labels))
    return service
