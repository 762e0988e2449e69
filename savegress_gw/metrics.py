"""Prometheus metrics aggregated across the gateway's processes through shared memory.

Every process owns one row of a shared float64 array and is its only writer (no locks on the
hot path; aligned 8-byte stores are never torn). The supervisor's collector sums the rows for
counters and histograms and takes the maximum for gauges, then exposes the result in the
Prometheus text format with ``prometheus_client``. A respawned process keeps its row, so counters
stay monotonic across restarts.

``savegress_event_latency_seconds`` is a summary whose quantiles (0.5, 0.9, 0.99) are estimated
from the merged latency histogram, which is exposed too as ``..._histogram_seconds``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import multiprocess as mp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
ENCODINGS = ("identity", "lz4", "zstd")
DROP_REASONS = ("drop_oldest", "drop_newest", "rejected", "filtered", "deadline")


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its kind, help text and the label values it may carry."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    label: str | None = None
    values: tuple[str, ...] = ("",)
    buckets: tuple[float, ...] = ()

    @property
    def width(self) -> int:
        per_value = len(self.buckets) + 2 if self.kind == "histogram" else 1  # buckets, sum, count
        return per_value * len(self.values)


CATALOG = (
    MetricSpec("events_received_total", "counter", "Events read from the source (after filters)."),
    MetricSpec("events_processed_total", "counter", "Events delivered to the sink and acknowledged."),
    MetricSpec("events_dropped_total", "counter", "Events dropped by an explicit policy, by reason.",
               "reason", DROP_REASONS),
    MetricSpec("events_spilled_total", "counter", "Events written to the spill to disk."),
    MetricSpec("events_dead_lettered_total", "counter", "Events parked in the dead-letter queue."),
    MetricSpec("batches_sent_total", "counter", "Batches handed to the sink (retries included)."),
    MetricSpec("sink_errors_total", "counter", "Failed sink sends (each retry that failed counts)."),
    MetricSpec("backpressure_events_total", "counter", "Times backpressure engaged."),
    MetricSpec("worker_restarts_total", "counter", "Child processes replaced after a crash or stall."),
    MetricSpec("transactions_total", "counter", "Exactly-once: Kafka transactions, by outcome.", "outcome",
               ("committed", "aborted")),
    MetricSpec("events_skipped_total", "counter",
               "Exactly-once: events read again after a restart that Kafka already had (not produced twice)."),
    MetricSpec("events_archived_total", "counter",
               "Point-in-time recovery: delivered events appended to the archive."),
    MetricSpec("archive_segments_sealed_total", "counter", "Point-in-time recovery: archive segments sealed."),
    MetricSpec("ha_delivery_holds_total", "counter",
               "HA: times a worker held its deliveries because the supervisor's confirmation of the lead expired."),
    MetricSpec("compression_bytes_in_total", "counter", "Bytes given to the gateway compressor.", "algorithm",
               ENCODINGS),
    MetricSpec("compression_bytes_out_total", "counter", "Bytes the gateway compressor produced.", "algorithm",
               ENCODINGS),
    MetricSpec("buffer_utilization", "gauge", "Fill ratio (0-1) of the buffer between source and sink."),
    MetricSpec("circuit_breaker_state", "gauge", "Sink circuit breaker: 0 closed, 1 half-open, 2 open (worst worker)."),
    MetricSpec("spill_bytes", "gauge", "Bytes waiting in the spill to disk."),
    MetricSpec("checkpoint_age_seconds", "gauge", "Seconds since the source position was last checkpointed."),
    MetricSpec("replication_lag_seconds", "gauge",
               "Database sources: seconds from the commit of the newest delivered change to its delivery (0 when caught up)."),
    MetricSpec("replication_slot_lag_bytes", "gauge",
               "PostgreSQL: WAL bytes between the server's current position and the slot's confirmed flush position."),
    MetricSpec("event_latency_histogram_seconds", "histogram", "Gateway ingest to sink acknowledgement.",
               buckets=LATENCY_BUCKETS),
    MetricSpec("compression_duration_seconds", "histogram", "Time spent compressing one payload.", "algorithm",
               ENCODINGS, DURATION_BUCKETS),
)
_SPECS = {spec.name: spec for spec in CATALOG}
_OFFSETS: dict[str, int] = {}
_width = 0
for _spec in CATALOG:
    _OFFSETS[_spec.name] = _width
    _width += _spec.width
ROW_WIDTH = _width


class MetricsBlock:
    """The shared array: one row per process. Created by the supervisor before spawning."""

    def __init__(self, rows: int, context: Any | None = None) -> None:
        self.rows = rows
        self.array = (context or mp.get_context("spawn")).RawArray("d", rows * ROW_WIDTH)

    def row(self, index: int) -> "ProcessMetrics":
        return ProcessMetrics(self.array, index * ROW_WIDTH)

    def counter_totals(self) -> dict[str, float]:
        """Every counter summed over all processes, as ``name`` or ``name_<label value>``."""
        totals: dict[str, float] = {}
        for spec in CATALOG:
            if spec.kind != "counter":
                continue
            for i, value in enumerate(spec.values):
                slot = _OFFSETS[spec.name] + i
                key = f"{spec.name.removesuffix('_total')}_{value}" if spec.label else spec.name.removesuffix("_total")
                totals[key] = sum(self.array[row * ROW_WIDTH + slot] for row in range(self.rows))
        return totals


class ProcessMetrics:
    """The writer for one process's row. Call it per batch, not per event."""

    def __init__(self, array: Any, base: int) -> None:
        self._a = array
        self._base = base

    def _slot(self, name: str, label: str) -> int:
        spec = _SPECS[name]
        index = spec.values.index(label) if spec.label else 0
        per_value = spec.width // len(spec.values)
        return self._base + _OFFSETS[name] + index * per_value

    def inc(self, name: str, amount: float = 1.0, label: str = "") -> None:
        self._a[self._slot(name, label)] += amount

    def set(self, name: str, value: float, label: str = "") -> None:
        self._a[self._slot(name, label)] = value

    def observe(self, name: str, value: float, weight: float = 1.0, label: str = "") -> None:
        """Add ``value`` to a histogram ``weight`` times (a sample standing for ``weight`` events)."""
        spec = _SPECS[name]
        slot = self._slot(name, label)
        bucket = bisect.bisect_left(spec.buckets, value)
        if bucket < len(spec.buckets):  # above the last bound it only counts toward +Inf
            self._a[slot + bucket] += weight
        self._a[slot + len(spec.buckets)] += value * weight
        self._a[slot + len(spec.buckets) + 1] += weight


class GatewayCollector(Collector):
    """Reads every row and yields the merged metric families (prefix ``namespace_``)."""

    def __init__(self, block: MetricsBlock, namespace: str = "savegress", labels: dict[str, str] | None = None):
        self.block = block
        self.namespace = namespace
        self.const = dict(labels or {})

    def _merged(self) -> list[float]:
        a = self.block.array
        merged = [0.0] * ROW_WIDTH
        for row in range(self.block.rows):
            base = row * ROW_WIDTH
            for name, offset in _OFFSETS.items():
                spec = _SPECS[name]
                for i in range(offset, offset + spec.width):
                    value = a[base + i]
                    merged[i] = max(merged[i], value) if spec.kind == "gauge" else merged[i] + value
        return merged

    def collect(self) -> Iterator[Any]:
        merged = self._merged()
        names = list(self.const)
        for spec in CATALOG:
            full = f"{self.namespace}_{spec.name}"
            label_names = names + ([spec.label] if spec.label else [])
            per_value = spec.width // len(spec.values)
            offset = _OFFSETS[spec.name]
            if spec.kind == "histogram":
                family = HistogramMetricFamily(full, spec.help, labels=label_names)
            elif spec.kind == "counter":
                family = CounterMetricFamily(full.removesuffix("_total"), spec.help, labels=label_names)
            else:
                family = GaugeMetricFamily(full, spec.help, labels=label_names)
            for i, value in enumerate(spec.values):
                start = offset + i * per_value
                labels = list(self.const.values()) + ([value] if spec.label else [])
                if spec.kind == "histogram":
                    family.add_metric(labels, _cumulative(spec.buckets, merged[start:start + per_value]),
                                      merged[start + len(spec.buckets)])
                else:
                    family.add_metric(labels, merged[start])
            yield family
        yield self._compression_ratio(merged, names)
        yield self._latency_summary(merged, names)

    def _compression_ratio(self, merged: list[float], names: list[str]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(f"{self.namespace}_compression_ratio",
                                   "Bytes in / bytes out of the gateway compressor, by algorithm used.",
                                   labels=names + ["algorithm"])
        bytes_in, bytes_out = _OFFSETS["compression_bytes_in_total"], _OFFSETS["compression_bytes_out_total"]
        for i, encoding in enumerate(ENCODINGS):
            if merged[bytes_out + i] > 0:
                family.add_metric(list(self.const.values()) + [encoding], merged[bytes_in + i] / merged[bytes_out + i])
        return family

    def _latency_summary(self, merged: list[float], names: list[str]) -> SummaryMetricFamily:
        spec = _SPECS["event_latency_histogram_seconds"]
        start = _OFFSETS[spec.name]
        counts = merged[start:start + len(spec.buckets)]
        total, count = merged[start + len(spec.buckets)], merged[start + len(spec.buckets) + 1]
        family = SummaryMetricFamily(f"{self.namespace}_event_latency_seconds",
                                     "Gateway ingest to sink acknowledgement (quantiles estimated from the histogram).",
                                     labels=names + ["quantile"])
        # SummaryMetricFamily has no quantile helper with constant labels: emit samples directly.
        family.samples.extend(
            _sample(f"{self.namespace}_event_latency_seconds", dict(self.const, quantile=str(q)),
                    estimate_quantile(spec.buckets, counts, count, q))
            for q in (0.5, 0.9, 0.99)
        )
        family.samples.append(_sample(f"{self.namespace}_event_latency_seconds_count", self.const, count))
        family.samples.append(_sample(f"{self.namespace}_event_latency_seconds_sum", self.const, total))
        return family


def _sample(name: str, labels: dict[str, str], value: float) -> Any:
    from prometheus_client.samples import Sample
    return Sample(name, labels, value, None, None)


def _cumulative(buckets: tuple[float, ...], values: list[float]) -> list[tuple[str, float]]:
    running = 0.0
    out = []
    for bound, value in zip(buckets, values):
        running += value
        out.append((str(bound), running))
    out.append(("+Inf", values[len(buckets) + 1]))
    return out


def estimate_quantile(buckets: tuple[float, ...], counts: list[float], total: float, q: float) -> float:
    """The ``q`` quantile by linear interpolation inside the bucket that holds it.

    ``counts`` are per-bucket (not cumulative) and ``total`` includes observations above the last
    bound; a quantile that falls there is reported as the last bound. NaN when nothing was observed.
    """
    if total <= 0:
        return float("nan")
    rank = q * total
    running = 0.0
    lower = 0.0
    for bound, count in zip(buckets, counts):
        if running + count >= rank and count > 0:
            return lower + (bound - lower) * (rank - running) / count
        running += count
        lower = bound
    return buckets[-1]
