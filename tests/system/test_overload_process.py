"""Overload through a real gateway: drops happen only under drop policies and match the counters."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import pytest
import requests

from tests.harness.gateway import Gateway, free_port
from tests.harness.verify import file_sink_events, verify_sequences

pytestmark = pytest.mark.slow

COUNT = 30_000


def overload_profile(tmp_path: Path, **sections) -> dict:
    """A generator far faster than a sink throttled to 5,000 events/s, into a 1,000-event buffer."""
    (tmp_path / "out").mkdir(exist_ok=True)
    profile = {
        "gateway": {"workers": 1},
        "source": {"type": "generator", "count": COUNT, "rate": 0, "row_size": 200},
        "output": {"type": "file", "path": str(tmp_path / "out" / "events.jsonl")},
        "compression": {"enabled": False, "algorithm": "none"},
        "batching": {"max_size": 100, "max_wait": "10ms"},
        "buffer": {"size": 1000},
        "rate_limiting": {"algorithm": "token_bucket", "tokens_per_second": 5000, "burst_size": 100},
    }
    profile.update(sections)
    return profile


def final_counters(gateway: Gateway) -> dict:
    """The totals the supervisor logs when it stops."""
    for line in gateway.stderr().splitlines():
        if line.startswith("{") and '"gateway stopped"' in line:
            return json.loads(line)
    raise AssertionError(f"no 'gateway stopped' line in:\n{gateway.stderr()}")


def delivered(tmp_path: Path) -> list[int]:
    return [e["after"]["seq"] for e in file_sink_events(tmp_path / "out" / "events.jsonl")]


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_overflow_drop_policies_drop_and_count(tmp_path: Path, policy: str) -> None:
    profile = overload_profile(tmp_path, backpressure={"enabled": False})
    profile["buffer"]["overflow_policy"] = policy
    gateway = Gateway(tmp_path, profile).start()
    assert gateway.wait(120) == 0, gateway.stderr()
    counters = final_counters(gateway)
    seqs = delivered(tmp_path)
    dropped = counters.get(f"events_dropped_{policy}", 0)
    assert dropped > 0, counters
    assert len(seqs) == len(set(seqs)) == counters["events_processed"]
    assert counters["events_processed"] + dropped == COUNT, counters


@pytest.mark.parametrize("strategy", ["pause", "adaptive_throttle"])
def test_lossless_backpressure_delivers_everything_and_counts_activations(tmp_path: Path, strategy: str) -> None:
    profile = overload_profile(tmp_path, backpressure={"strategy": strategy, "high_watermark": 0.5,
                                                       "low_watermark": 0.2})
    gateway = Gateway(tmp_path, profile).start()
    assert gateway.wait(120) == 0, gateway.stderr()
    counters = final_counters(gateway)
    verdict = verify_sequences(delivered(tmp_path), COUNT)
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    assert counters.get("backpressure_events", 0) > 0, counters
    assert not any(k.startswith("events_dropped") for k in counters), counters


def test_http_source_answers_429_under_backpressure_and_loses_nothing_it_accepted(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "out").mkdir()
    gateway = Gateway(tmp_path, {
        "source": {"type": "http", "listen": f"127.0.0.1:{port}", "retry_after": "1s"},
        "output": {"type": "file", "path": str(tmp_path / "out" / "events.jsonl")},
        "buffer": {"size": 200},
        "batching": {"max_size": 50, "max_wait": "5ms"},
        "rate_limiting": {"algorithm": "token_bucket", "tokens_per_second": 400, "burst_size": 50},
        "backpressure": {"strategy": "pause", "high_watermark": 0.5, "low_watermark": 0.25},
    }).start()
    try:
        gateway.wait_ready()

        def post(n: int) -> tuple[int, list[int], str | None]:
            ids = list(range(n * 100, n * 100 + 100))
            body = "\n".join(json.dumps({"table": "t", "operation": "INSERT", "after": {"id": i}}) for i in ids)
            r = requests.post(f"http://127.0.0.1:{port}/v1/events", data=body, timeout=60,
                              headers={"Content-Type": "application/x-ndjson"})
            return r.status_code, ids, r.headers.get("Retry-After")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(post, range(24)))
    finally:
        assert gateway.stop() == 0
    statuses = [status for status, _, _ in results]
    assert 429 in statuses and 202 in statuses, statuses
    assert all(int(retry) >= 1 for status, _, retry in results if status == 429)
    accepted = {i for status, ids, _ in results if status == 202 for i in ids}
    written = [e["after"]["id"] for e in file_sink_events(tmp_path / "out" / "events.jsonl")]
    assert accepted <= set(written), "a 202 must mean delivered"


def test_deadline_sets_aside_what_waited_too_long_and_counts_it(tmp_path: Path) -> None:
    profile = overload_profile(tmp_path, backpressure={"strategy": "deadline", "deadline": "50ms",
                                                       "high_watermark": 0.9})
    gateway = Gateway(tmp_path, profile).start()
    assert gateway.wait(120) == 0, gateway.stderr()
    counters = final_counters(gateway)
    seqs = delivered(tmp_path)
    late = counters.get("events_dropped_deadline", 0)
    assert late > 0, counters
    assert len(seqs) == len(set(seqs)) == counters["events_processed"]
    assert counters["events_processed"] + late == COUNT, counters


def test_buffer_strategy_spills_to_disk_and_delivers_everything_in_order(tmp_path: Path) -> None:
    profile = overload_profile(tmp_path, backpressure={"strategy": "buffer", "high_watermark": 0.5,
                                                       "low_watermark": 0.2})
    profile["buffer"]["overflow"] = {"path": str(tmp_path / "spill"), "max_size": "64MB"}
    profile["gateway"]["workers"] = 2
    gateway = Gateway(tmp_path, profile).start()
    assert gateway.wait(120) == 0, gateway.stderr()
    counters = final_counters(gateway)
    assert counters.get("events_spilled", 0) > 0, counters
    verdict = verify_sequences(delivered(tmp_path), COUNT)
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    assert not any(k.startswith("events_dropped") for k in counters), counters
    assert list((tmp_path / "spill").glob("*.seg")) in ([], [tmp_path / "spill" / "spill-00000001.seg"])


def test_a_full_spill_pauses_the_source_instead_of_dropping(tmp_path: Path) -> None:
    profile = overload_profile(tmp_path, backpressure={"strategy": "buffer", "high_watermark": 0.5,
                                                       "low_watermark": 0.2})
    profile["buffer"]["overflow"] = {"path": str(tmp_path / "spill"), "max_size": "256KB", "compression": False}
    gateway = Gateway(tmp_path, profile).start()
    assert gateway.wait(120) == 0, gateway.stderr()
    assert "spill is full: pausing the source" in gateway.stderr()
    verdict = verify_sequences(delivered(tmp_path), COUNT)
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)


def test_sigkill_of_the_supervisor_mid_spill_recovers_and_loses_nothing(tmp_path: Path) -> None:
    import signal

    from tests.harness.gateway import alive, wait_for

    count = 60_000
    profile = overload_profile(tmp_path, backpressure={"strategy": "buffer", "high_watermark": 0.5,
                                                       "low_watermark": 0.2})
    profile["source"]["count"] = count
    spill = tmp_path / "spill"
    profile["buffer"]["overflow"] = {"path": str(spill), "max_size": "64MB"}
    gateway = Gateway(tmp_path, profile).start()
    gateway.wait_ready()
    wait_for(lambda: sum(p.stat().st_size for p in spill.glob("*.seg")) > 100_000, 30, "the spill to fill")
    children = gateway.workers()
    gateway.signal(signal.SIGKILL)
    gateway.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "the children to die with the supervisor")
    assert list(spill.glob("*.seg")), "the spill survives the crash"

    restarted = Gateway(tmp_path, profile).start()
    assert restarted.wait(180) == 0, restarted.stderr()
    assert "recovered frames spilled by a previous run" in restarted.stderr()
    verdict = verify_sequences(delivered(tmp_path), count)
    print(f"supervisor SIGKILL mid-spill: {verdict}")
    assert verdict.missing == [], str(verdict)


def test_weighted_fair_hands_priority_tables_out_first_and_loses_nothing(tmp_path: Path) -> None:
    profile = overload_profile(tmp_path, backpressure={"strategy": "weighted_fair", "high_watermark": 0.5},
                               parallel={"priority": {"enabled": True, "high_priority_tables": ["public.orders"]}})
    profile["source"]["generator_tables"] = ["public.users", "public.orders"]
    gateway = Gateway(tmp_path, profile).start()
    assert gateway.wait(120) == 0, gateway.stderr()
    events = file_sink_events(tmp_path / "out" / "events.jsonl")
    verdict = verify_sequences([e["after"]["seq"] for e in events], COUNT)
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    # Displacement: how far ahead (negative) or behind an event was delivered relative to the order
    # in which it was generated. Priority tables jump the queue; the others wait behind them.
    shift = {"orders": [], "users": []}
    for position, event in enumerate(events):
        shift[event["table"]].append(position - (event["after"]["seq"] - 1))
    orders, users = (sum(v) / len(v) for v in (shift["orders"], shift["users"]))
    print(f"weighted_fair: mean displacement orders {orders:+.0f}, users {users:+.0f} events")
    assert orders < -100 < 100 < users
