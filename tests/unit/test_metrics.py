"""Metrics rows in shared memory, merged by GatewayCollector and exposed through prometheus_client."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from savegress_gw.metrics import CATALOG, LATENCY_BUCKETS, ROW_WIDTH, GatewayCollector, MetricsBlock, estimate_quantile


def exposed(block: MetricsBlock, **kwargs) -> tuple[CollectorRegistry, str]:
    registry = CollectorRegistry()
    registry.register(GatewayCollector(block, **kwargs))
    return registry, generate_latest(registry).decode()


def test_rows_are_separate_slices_of_one_array() -> None:
    block = MetricsBlock(3)
    assert len(block.array) == 3 * ROW_WIDTH
    block.row(1).inc("events_processed_total", 5)
    assert sum(block.array[:ROW_WIDTH]) == 0 == sum(block.array[2 * ROW_WIDTH:])
    assert sum(block.array[ROW_WIDTH:2 * ROW_WIDTH]) == 5


def test_counters_sum_and_gauges_take_the_maximum_across_rows() -> None:
    block = MetricsBlock(3)
    block.row(0).inc("events_processed_total", 5)
    block.row(2).inc("events_processed_total", 7)
    block.row(1).inc("events_processed_total")
    block.row(0).inc("events_dropped_total", 2, label="rejected")
    block.row(2).inc("events_dropped_total", 3, label="rejected")
    block.row(1).inc("events_dropped_total", 4, label="drop_newest")
    block.row(0).set("buffer_utilization", 0.3)
    block.row(1).set("buffer_utilization", 0.9)
    block.row(2).set("buffer_utilization", 0.5)
    block.row(1).set("buffer_utilization", 0.6)  # set replaces
    registry, text = exposed(block)
    assert registry.get_sample_value("savegress_events_processed_total") == 13
    assert registry.get_sample_value("savegress_events_dropped_total", {"reason": "rejected"}) == 5
    assert registry.get_sample_value("savegress_events_dropped_total", {"reason": "drop_newest"}) == 4
    assert registry.get_sample_value("savegress_events_dropped_total", {"reason": "filtered"}) == 0
    assert registry.get_sample_value("savegress_buffer_utilization") == 0.6
    assert "# TYPE savegress_events_processed_total counter" in text
    assert "# TYPE savegress_buffer_utilization gauge" in text


def test_every_catalog_metric_is_exposed_with_namespace_and_constant_labels() -> None:
    block = MetricsBlock(1)
    _, text = exposed(block, namespace="gw", labels={"gateway": "east"})
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for spec in CATALOG:
        name = f"gw_{spec.name}".removesuffix("_total")
        assert name in families, name
        assert families[name].type == spec.kind
        for sample in families[name].samples:
            assert sample.labels["gateway"] == "east"
    assert families["gw_event_latency_seconds"].type == "summary"


def test_histogram_buckets_are_cumulative() -> None:
    block = MetricsBlock(2)
    block.row(0).observe("event_latency_histogram_seconds", 0.003)           # -> le 0.005
    block.row(1).observe("event_latency_histogram_seconds", 0.005, weight=2)  # a bound is inclusive
    block.row(1).observe("event_latency_histogram_seconds", 0.2)             # -> le 0.25
    block.row(0).observe("event_latency_histogram_seconds", 100.0)           # above 60: +Inf only
    registry, _ = exposed(block)

    def bucket(le: str) -> float:
        return registry.get_sample_value("savegress_event_latency_histogram_seconds_bucket", {"le": le})

    assert bucket("0.0025") == 0
    assert bucket("0.005") == 3
    assert bucket("0.01") == 3
    assert bucket("0.1") == 3
    assert bucket("0.25") == 4
    assert bucket("60.0") == 4
    assert bucket("+Inf") == 5
    counts = [bucket(str(b)) for b in LATENCY_BUCKETS] + [bucket("+Inf")]
    assert counts == sorted(counts)
    assert registry.get_sample_value("savegress_event_latency_histogram_seconds_count") == 5
    assert registry.get_sample_value("savegress_event_latency_histogram_seconds_sum") == pytest.approx(
        0.003 + 0.01 + 0.2 + 100.0
    )
    assert registry.get_sample_value("savegress_event_latency_seconds_count") == 5


def test_labelled_histogram_keeps_labels_apart() -> None:
    block = MetricsBlock(1)
    block.row(0).observe("compression_duration_seconds", 0.0002, label="zstd")
    block.row(0).observe("compression_duration_seconds", 0.00005, label="lz4")
    registry, _ = exposed(block)
    value = registry.get_sample_value
    assert value("savegress_compression_duration_seconds_count", {"algorithm": "zstd"}) == 1
    assert value("savegress_compression_duration_seconds_bucket", {"algorithm": "zstd", "le": "0.0001"}) == 0
    assert value("savegress_compression_duration_seconds_bucket", {"algorithm": "zstd", "le": "0.0005"}) == 1
    assert value("savegress_compression_duration_seconds_bucket", {"algorithm": "lz4", "le": "0.0001"}) == 1
    assert value("savegress_compression_duration_seconds_count", {"algorithm": "identity"}) == 0


def test_latency_summary_quantiles_come_from_the_histogram() -> None:
    block = MetricsBlock(1)
    for _ in range(90):
        block.row(0).observe("event_latency_histogram_seconds", 0.004)  # (0.0025, 0.005]
    for _ in range(10):
        block.row(0).observe("event_latency_histogram_seconds", 0.3)    # (0.25, 0.5]
    registry, _ = exposed(block)
    q = {quantile: registry.get_sample_value("savegress_event_latency_seconds", {"quantile": quantile})
         for quantile in ("0.5", "0.9", "0.99")}
    assert 0.0025 < q["0.5"] <= 0.005
    assert q["0.9"] == pytest.approx(0.005)
    assert 0.25 < q["0.99"] <= 0.5


def test_empty_summary_is_nan() -> None:
    registry, _ = exposed(MetricsBlock(1))
    assert math.isnan(registry.get_sample_value("savegress_event_latency_seconds", {"quantile": "0.5"}))


def test_estimate_quantile() -> None:
    buckets = (1.0, 2.0, 4.0)
    assert math.isnan(estimate_quantile(buckets, [0, 0, 0], 0, 0.5))
    assert estimate_quantile(buckets, [0, 10, 0], 10, 0.5) == pytest.approx(1.5)   # interpolated in (1, 2]
    assert estimate_quantile(buckets, [10, 0, 0], 10, 0.5) == pytest.approx(0.5)   # first bucket starts at 0
    assert estimate_quantile(buckets, [5, 0, 5], 10, 0.75) == pytest.approx(3.0)   # empty buckets are skipped
    assert estimate_quantile(buckets, [5, 0, 5], 10, 1.0) == pytest.approx(4.0)
    assert estimate_quantile(buckets, [1, 1, 1], 10, 0.9) == 4.0  # above the last bound: reported as it
    values = [estimate_quantile(buckets, [3, 4, 3], 10, q) for q in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)]
    assert values == sorted(values)
