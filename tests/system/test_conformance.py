"""Reliability conformance (issue 4): a real gateway delivering to a webhook that fails on purpose.

Each test starts the whole process tree (supervisor, source process, two workers) with the
generator source (``after.seq`` 1..N) and the webhook output pointed at a
:class:`~tests.harness.flaky_http.FlakyReceiver`, breaks the receiver in one way, and then
accounts for every event: it is in the receiver, or in the file dead-letter queue, or (only
under a drop policy) counted as dropped; nothing else, nothing invented. Counters come from the
supervisor's final ``gateway stopped`` line. The short versions run in CI; the ``soak`` ones
(``--soak``) use the issue's durations: a 30 s outage and 60 s of 10x overload. The same
scenarios against the other sinks that can fail: ``test_conformance_file.py`` (a tmpfs filled
up: ENOSPC) and ``test_conformance_kafka.py`` (oversize records, a stopped broker).

Memory bound. Every test samples the summed ``VmRSS`` of the gateway's process tree every 0.5 s
and holds it under :data:`RSS_BOUND` (448 MB) and within :data:`RSS_GROWTH` (128 MB) of what the
tree used once ready. Measured on the 2-core CI machine (2026-11-27): the tree is about 300 MB
once ready, with the shared rings counted once per process, and peaks at 310-400 MB under the
scenarios here; the highest is the 5 s ``drop_oldest`` overload (355-414 MB over 8 runs), where
the source process grows from ~66 to ~150 MB while it stages and drops. The
scenarios offer far more than the headroom: the 30 s soak outage 108k events of 1 KB (90k of
them while nothing can be delivered), the 60 s soak overload 600k events of 1 KB (600 MB); a
gateway that read them into process memory instead of pausing, dropping or spilling would cross
the bound.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from savegress_gw.deadletter import DeadLetterStore
from tests.harness.flaky_http import (
    MB,
    FlakyReceiver,
    Sampler,
    account,
    dir_size,
    dlq_cli,
    dlq_entries,
    dlq_seqs,
    entry_seq,
    final_counters,
    gateway_probes,
    kill_tree,
    listed_ids,
    log_lines,
    metric_probe,
    poison_every,
    tree_rss_bytes,
    webhook_output,
)
from tests.harness.gateway import Gateway, alive, wait_for
from tests.harness.verify import verify_sequences

pytestmark = pytest.mark.slow

RSS_BOUND = 448 * MB
"""Resident memory of the whole process tree, summed (see the module docstring)."""
RSS_GROWTH = 128 * MB
"""Most the tree may grow beyond what it used once ready."""


Launch = Callable[[dict], Gateway]


@pytest.fixture()
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start gateways in ``tmp_path``; any still running when the test ends is killed."""
    started: list[Gateway] = []

    def launch(profile: dict) -> Gateway:
        started.append(Gateway(tmp_path, profile).start())
        return started[-1]

    yield launch
    for gateway in started:
        kill_tree(gateway)


def base_profile(tmp_path: Path, receiver: FlakyReceiver, count: int, rate: float, **sections: Any) -> dict:
    profile: dict[str, Any] = {
        "gateway": {"workers": 2, "graceful_timeout": "20s"},
        "source": {"type": "generator", "count": count, "rate": rate, "row_size": 300},
        "output": webhook_output(receiver),
        "batching": {"max_size": 100, "max_wait": "20ms"},
        "retry": {"initial_delay": "10ms", "max_delay": "100ms", "multiplier": 2, "jitter": 0.1},
        "circuit_breaker": {"failure_threshold": 5, "success_threshold": 1, "timeout": "50ms",
                            "half_open_requests": 1},
    }
    profile.update(sections)
    return profile


def file_dlq(tmp_path: Path, **extra: Any) -> dict:
    return {"enabled": True, "type": "file", "base_dir": str(tmp_path / "dlq"), "max_retries": 3,
            "retry_delay": "10ms", **extra}


def check_memory(samples: Any, ready_rss: int, what: str) -> None:
    peak = samples.peak("rss")
    print(f"{what}: tree RSS ready {ready_rss / MB:.0f} MB, peak {peak / MB:.0f} MB "
          f"over {len(samples.values('rss'))} samples")
    assert peak <= RSS_BOUND, f"{what}: the tree's RSS reached {peak / MB:.0f} MB"
    assert peak - ready_rss <= RSS_GROWTH, f"{what}: the tree grew by {(peak - ready_rss) / MB:.0f} MB"


# ---------------------------------------------------------------------------------------------
# 1. a sink failing a random 30 % of sends


def test_random_503s_every_event_is_delivered_or_dead_lettered_and_none_invented(tmp_path: Path,
                                                                                  launch: Launch) -> None:
    count = 30_000
    with FlakyReceiver(fail_rate=0.3, seed=4) as receiver:
        # One request per send (20 events), so a send fails with p = 0.3 and a batch is parked
        # after 4 failed attempts with p = 0.3**4 (about 12 of the 1,500 batches).
        profile = base_profile(tmp_path, receiver, count, rate=10_000,
                               output=webhook_output(receiver, batch_size=20),
                               batching={"max_size": 20, "max_wait": "10ms"}, dlq=file_dlq(tmp_path))
        gateway = launch(profile)
        started = time.monotonic()
        with Sampler(gateway_probes(gateway)) as sampler:
            gateway.wait_ready()
            ready_rss = tree_rss_bytes(gateway.pid)
            assert gateway.wait(180) == 0, gateway.stderr()[-5000:]
        elapsed = time.monotonic() - started
        statuses = receiver.statuses()
    counters = final_counters(gateway)
    entries = dlq_entries(tmp_path / "dlq")
    books = account(receiver, tmp_path / "dlq", count)
    print(f"30% 503s in {elapsed:.1f}s: {books}; receiver answered {dict(statuses)}; counters {counters}")
    assert books.missing == [] and books.invented == [], str(books)
    assert books.both == set(), "an event both delivered and parked"
    assert counters["events_processed"] == len(set(books.delivered)) == len(books.delivered) - receiver.duplicates()
    assert counters.get("events_dead_lettered", 0) == len(entries) == len(books.parked) > 0, counters
    assert counters["sink_errors"] == statuses[503], "every 503 is one failed send"
    assert all("503" in e.reason and e.attempts == 4 for e in entries), {(e.reason, e.attempts) for e in entries}
    check_memory(sampler.samples, ready_rss, "30% 503s")


# ---------------------------------------------------------------------------------------------
# 2. the sink down for a while, then back


@pytest.mark.parametrize(("outage_s", "count"), [pytest.param(6.0, 24_000, id="6s"),
                                                  pytest.param(30.0, 108_000, id="30s", marks=pytest.mark.soak)])
@pytest.mark.parametrize("mode", ["refused", "503"])
def test_an_outage_loses_nothing_and_the_breaker_opens_and_closes(tmp_path: Path, launch: Launch, mode: str,
                                                                   outage_s: float, count: int) -> None:
    """``refused``: the listener and its connections are closed; ``503``: every request is answered
    503 with ``Retry-After: 1``, which the gateway must honour (at most about a request a second
    per worker while down).

    The generator offers 3,000 events/s of 1 KB. The source pauses once the buffer is full, so
    about 1 s of events arrives before the outage and about 3 s of them are read during it; the
    rest waits in the source (the soak's count is the whole outage's worth and more: 108 MB)."""
    rate = 3_000
    with FlakyReceiver(retry_after="1") as receiver:
        profile = base_profile(
            tmp_path, receiver, count, rate,
            retry={"initial_delay": "50ms", "max_delay": "500ms", "multiplier": 2, "jitter": 0.1},
            circuit_breaker={"failure_threshold": 3, "success_threshold": 2, "timeout": "1s",
                             "half_open_requests": 1})
        profile["source"]["row_size"] = 1000
        gateway = launch(profile)
        breaker = metric_probe(gateway, "savegress_circuit_breaker_state")
        with Sampler(gateway_probes(gateway, breaker=breaker)) as sampler:
            gateway.wait_ready()
            ready_rss = tree_rss_bytes(gateway.pid)
            wait_for(lambda: receiver.count() >= 3_000, 30, "events to flow")
            receiver.go_down(refuse=mode == "refused")
            down_at, down_wall = time.monotonic(), time.time()
            wait_for(lambda: breaker() == 2, 10, "the breaker to open", interval=0.02)
            opened_after = time.monotonic() - down_at
            delivered_before = receiver.count()
            time.sleep(max(0.0, down_at + outage_s - time.monotonic()))  # the outage itself
            receiver.come_up()
            up_at, up_wall = time.monotonic(), time.time()
            wait_for(lambda: breaker() == 0, 30, "the breaker to close", interval=0.02)
            closed_after = time.monotonic() - up_at
            assert gateway.wait(120) == 0, gateway.stderr()[-5000:]
            finished_after = time.monotonic() - up_at
    first_delivery = min(r.at for r in receiver.requests if r.status == 200 and r.at >= up_at) - up_at
    verdict = verify_sequences(receiver.seqs(), count)
    opens, closes = log_lines(gateway, "circuit breaker open"), log_lines(gateway, "circuit breaker closed")
    states = [s for _, s in sampler.samples.series["breaker"]]
    failed_while_down = sum(1 for r in receiver.requests if down_at <= r.at < up_at and r.status != 200)
    print(f"outage {outage_s:g}s ({mode}): {verdict}; {delivered_before} delivered before it, "
          f"{failed_while_down} requests answered while down; breaker open after "
          f"{opened_after:.2f}s, closed {closed_after:.2f}s after the receiver came back, first delivery "
          f"{first_delivery:.2f}s after, gateway done {finished_after:.1f}s after; {len(opens)} open / "
          f"{len(closes)} closed log lines; receiver {dict(receiver.statuses())}")
    assert verdict.missing == [], str(verdict)
    assert 2.0 in states and states[-1] == 0.0, states
    assert opens and closes, "the breaker logs its transitions"
    assert all(_iso(line["timestamp"]) >= down_wall for line in opens)
    for process in {line["process"] for line in opens}:  # each worker's breaker ends closed
        last = max((line for line in opens + closes if line["process"] == process), key=lambda line: line["timestamp"])
        assert last["event"] == "circuit breaker closed" and _iso(last["timestamp"]) >= up_wall, last
    assert "sink rejected events" not in gateway.stderr(), "no dead-letter queue: nothing is given up"
    if mode == "503":  # Retry-After: 1 and a 1 s breaker timeout, per worker; +50 % for jitter
        assert failed_while_down <= 2 * (outage_s + 2) * 1.5, failed_while_down
    check_memory(sampler.samples, ready_rss, f"outage {outage_s:g}s ({mode})")


def test_a_half_open_breaker_shows_in_the_state_gauge(tmp_path: Path, launch: Launch) -> None:
    with FlakyReceiver() as receiver:
        # 100 successful probes, one at a time, to close: the breaker stays half-open for a while
        profile = base_profile(tmp_path, receiver, 30_000, 3_000,
                               retry={"initial_delay": "50ms", "max_delay": "500ms"},
                               circuit_breaker={"failure_threshold": 3, "success_threshold": 100,
                                                "timeout": "500ms", "half_open_requests": 1})
        gateway = launch(profile)
        breaker = metric_probe(gateway, "savegress_circuit_breaker_state")
        try:
            gateway.wait_ready()
            wait_for(lambda: receiver.count() >= 2_000, 30, "events to flow")
            receiver.go_down()
            wait_for(lambda: breaker() == 2, 10, "the breaker to open", interval=0.02)
            receiver.come_up()
            seen: list[float | None] = []
            wait_for(lambda: seen.append(breaker()) or seen[-1] in (0.0, 1.0), 10, "the breaker to leave open",
                     interval=0.01)
            print(f"after the receiver came back the gauge read {seen[:3]}...{seen[-3:]} ({len(seen)} polls)")
            assert seen[-1] == 1.0, "the breaker closed without the gauge ever reading half-open"
        finally:
            gateway.stop()


def _iso(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------
# 3. 10x overload with every backpressure strategy

LOSSLESS = ["pause", "adaptive_throttle", "buffer"]
DROPPING = ["drop_oldest", "drop_newest", "deadline"]  # each counts its drops under its own reason
SPILL_MAX = 8 * MB


@pytest.mark.parametrize("overload_s", [pytest.param(5.0, id="5s"),
                                        pytest.param(60.0, id="60s", marks=pytest.mark.soak)])
@pytest.mark.parametrize("strategy", LOSSLESS + DROPPING)
def test_overload_stays_bounded_and_only_drop_policies_drop(tmp_path: Path, launch: Launch, strategy: str,
                                                             overload_s: float) -> None:
    """The generator offers 10,000 events/s (1 KB each); the receiver takes 1,000/s for
    ``overload_s``, then recovers, and the gateway finishes the stream."""
    rate = 10_000
    count = int(rate * overload_s)
    with FlakyReceiver(rate=rate / 10) as receiver:
        backpressure: dict[str, Any] = {"strategy": strategy, "high_watermark": 0.5, "low_watermark": 0.2}
        profile = base_profile(tmp_path, receiver, count, rate, backpressure=backpressure,
                               buffer={"size": 2000})
        profile["source"]["row_size"] = 1000
        spill = tmp_path / "spill"
        if strategy == "buffer":
            profile["buffer"]["overflow"] = {"path": str(spill), "max_size": SPILL_MAX}
        if strategy == "deadline":
            backpressure["deadline"] = "300ms"
        gateway = launch(profile)
        spill_probes = {"spill": lambda: dir_size(spill), "waiting": metric_probe(gateway, "savegress_spill_bytes")}
        with Sampler(gateway_probes(gateway)) as sampler, Sampler(spill_probes, 0.05) as disk:
            gateway.wait_ready()
            ready_rss = tree_rss_bytes(gateway.pid)
            time.sleep(overload_s)  # the overload itself
            delivered_in_overload = receiver.count()
            receiver.rate = None
            recovered_at = time.monotonic()
            assert gateway.wait(120 + overload_s) == 0, gateway.stderr()[-5000:]
            finished_after = time.monotonic() - recovered_at
    counters = final_counters(gateway)
    verdict = verify_sequences(receiver.seqs(), count)
    dropped = {k: v for k, v in counters.items() if k.startswith("events_dropped")}
    print(f"{strategy} {overload_s:g}s: {verdict}; {delivered_in_overload} delivered during the overload, "
          f"the rest {finished_after:.1f}s after; dropped {dropped}; spilled {counters.get('events_spilled', 0)}, "
          f"spill peak {disk.samples.peak('waiting') / MB:.2f} MB waiting, {disk.samples.peak('spill') / MB:.2f} MB "
          f"on disk (max_size {SPILL_MAX / MB:g} MB); backpressure engaged "
          f"{counters.get('backpressure_events', 0)} times")
    assert verdict.duplicates == 0, str(verdict)
    assert counters["events_processed"] == len(receiver.seqs())
    assert delivered_in_overload <= rate / 10 * overload_s * 1.1 + 2_000, "the receiver was not slow"
    if strategy in DROPPING:
        assert set(dropped) == {f"events_dropped_{strategy}"}, dropped
        assert dropped[f"events_dropped_{strategy}"] == count - verdict.seen - counters.get("events_dead_lettered", 0)
        assert verdict.seen < count
    else:
        assert dropped == {}, dropped
        assert verdict.missing == [], str(verdict)
    if strategy == "buffer":
        assert counters.get("events_spilled", 0) > 0, counters
        assert disk.samples.peak("waiting") <= SPILL_MAX, f"{disk.samples.peak('waiting')} bytes waiting in the spill"
        assert disk.samples.peak("spill") <= SPILL_MAX, f"spill dir reached {disk.samples.peak('spill')} bytes"
    check_memory(sampler.samples, ready_rss, f"{strategy} overload {overload_s:g}s")


def test_the_spill_directory_never_exceeds_max_size(tmp_path: Path) -> None:
    """What the overload test sees now and then, made deterministic on the spill itself: fill it,
    feed a few frames back (as the source process does once backpressure releases), fill it again."""
    import structlog

    from savegress_gw.spill import SpilledFrame, SpillFull, SpillQueue

    max_size = 256 * 1024
    spill = SpillQueue(tmp_path / "spill", max_size, compress=False, log=structlog.get_logger())
    spill.open()
    frame = SpilledFrame(0, 10, os.urandom(4000))

    def fill() -> None:
        with pytest.raises(SpillFull):
            while True:
                spill.append(frame)
                assert dir_size(tmp_path / "spill") <= max_size, f"{dir_size(tmp_path / 'spill')} bytes on disk"

    fill()
    for _ in range(10):
        spill.pop()
    fill()
    spill.close()


# ---------------------------------------------------------------------------------------------
# 4. poison events and every dlq command


def test_poison_events_are_parked_listed_shown_replayed_and_purged(tmp_path: Path, launch: Launch) -> None:
    first, second = 600, 1_200
    poison = poison_every(50)
    with FlakyReceiver(reject=poison) as receiver:
        # batch_size 1: a 400 parks exactly the poison event, not the request's neighbours
        profile = base_profile(tmp_path, receiver, first, rate=0, dlq=file_dlq(tmp_path),
                               output=webhook_output(receiver, batch_size=1, timeout="2s"),
                               batching={"max_size": 20, "max_wait": "10ms"})
        gateway = launch(profile)
        assert gateway.wait(120) == 0, gateway.stderr()[-5000:]
        counters = final_counters(gateway)
        poisoned = list(range(50, first + 1, 50))
        assert sorted(dlq_seqs(tmp_path / "dlq")) == poisoned
        assert counters["events_dead_lettered"] == len(poisoned)
        assert counters["events_processed"] == first - len(poisoned)
        assert sorted(receiver.distinct()) == [n for n in range(1, first + 1) if n % 50]

        listing = dlq_cli(gateway, "list")
        assert listing.returncode == 0, listing.stderr
        ids = listed_ids(listing.stdout)
        assert len(ids) == len(poisoned) and f"{len(poisoned)} entries in" in listing.stdout, listing.stdout
        assert all("400" in line for line in listing.stdout.splitlines() if line.startswith("dlq-")), listing.stdout

        shown = dlq_cli(gateway, "show", ids[0])
        assert shown.returncode == 0, shown.stderr
        entry = json.loads(shown.stdout)
        stored = DeadLetterStore(tmp_path / "dlq").get(ids[0])
        assert entry["id"] == ids[0] and entry["event"] == json.loads(stored.payload)
        assert entry["event"]["after"]["seq"] in poisoned and entry["event_id"] == f"gen-{entry_seq(stored)}"
        assert "400" in entry["reason"] and "poison events" in entry["reason"]
        assert dlq_cli(gateway, "show", "dlq-99999999:0").returncode != 0

        # replay one entry while the receiver still rejects it: parked again as a new entry
        again = dlq_cli(gateway, "replay", "--id", ids[0])
        assert again.returncode == 0, again.stdout + again.stderr
        still = {e.id: entry_seq(e) for e in dlq_entries(tmp_path / "dlq")}
        assert sorted(still.values()) == poisoned, "nothing lost, nothing doubled"
        (new_id,) = set(still) - set(ids)
        assert set(still) - {new_id} == set(ids) - {ids[0]}, (ids, still)
        assert still[new_id] == entry["event"]["after"]["seq"]
        assert not set(poisoned) & receiver.distinct()

        receiver.reject = None  # the sink recovers
        started = time.monotonic()
        replay = dlq_cli(gateway, "replay")
        replay_s = time.monotonic() - started
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "0 entries left" in replay.stdout, replay.stdout
        assert set(poisoned) <= receiver.distinct()
        assert DeadLetterStore(tmp_path / "dlq").count() == 0
        assert "0 entries in" in dlq_cli(gateway, "list").stdout

        # a second batch, purged instead of replayed
        receiver.reject = poison
        profile["source"]["count"] = second
        gateway = launch(profile)  # resumes after seq 600 from the checkpoint
        assert gateway.wait(120) == 0, gateway.stderr()[-5000:]
        assert sorted(dlq_seqs(tmp_path / "dlq")) == list(range(first + 50, second + 1, 50))
        purge = dlq_cli(gateway, "purge", "--older-than", "0s")
        assert purge.returncode == 0, purge.stderr
        assert f"purged {len(poisoned)} entries" in purge.stdout, purge.stdout
        assert DeadLetterStore(tmp_path / "dlq").count() == 0
        assert "0 entries in" in dlq_cli(gateway, "list").stdout
    books = account(receiver, None, second)
    print(f"poison: {len(poisoned)} parked, replayed in {replay_s:.1f}s; second batch purged; {books}")
    assert set(range(1, second + 1)) - set(range(first + 50, second + 1, 50)) == books.union


def test_the_dlq_size_gauge_follows_parking_and_a_purge(tmp_path: Path, launch: Launch) -> None:
    """``savegress_dlq_entries`` (the guide's "DLQ size" alert) counts what is parked while the
    gateway runs, and drops when the ``dlq`` command purges it."""
    with FlakyReceiver(reject=poison_every(50)) as receiver:
        profile = base_profile(tmp_path, receiver, 1_000_000, rate=2_000, dlq=file_dlq(tmp_path),
                               output=webhook_output(receiver, batch_size=1, timeout="2s"),
                               batching={"max_size": 20, "max_wait": "10ms"})
        gateway = launch(profile)
        entries = metric_probe(gateway, "savegress_dlq_entries")  # no sample before the first count
        try:
            gateway.wait_ready()
            wait_for(lambda: (entries() or 0) >= 20, 40, "20 parked entries to be counted")
            receiver.reject = None
            accepted = receiver.count()
            wait_for(lambda: receiver.count() > accepted + 2_000, 30, "retries in flight to settle")
            purge = dlq_cli(gateway, "purge", "--older-than", "0s")
            assert purge.returncode == 0, purge.stdout + purge.stderr
            wait_for(lambda: entries() == 0, 30, "the gauge to show the purge")
            assert gateway.metric("savegress_dlq_count_age_seconds") < 15
        finally:
            assert gateway.stop() == 0, gateway.stderr()[-3000:]


# ---------------------------------------------------------------------------------------------
# 5. SIGKILL of the supervisor while events are being parked


def test_sigkill_of_the_supervisor_while_parking_keeps_the_dlq_and_loses_nothing(tmp_path: Path,
                                                                                 launch: Launch) -> None:
    count = 40_000

    def rejected(event: dict) -> bool:  # blocks of 500 alternately accepted and rejected
        return (event["after"]["seq"] - 1) // 500 % 2 == 1

    with FlakyReceiver(reject=rejected) as receiver:
        profile = base_profile(tmp_path, receiver, count, rate=5_000,
                               output=webhook_output(receiver, batch_size=20), dlq=file_dlq(tmp_path))
        gateway = launch(profile)
        gateway.wait_ready()
        store = DeadLetterStore(tmp_path / "dlq")
        wait_for(lambda: store.count() >= 3_000, 60, "events to be parked")
        before = {e.id: (e.event_id, e.payload) for e in store.entries()}
        children = gateway.workers()
        gateway.signal(signal.SIGKILL)
        gateway.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in children), 10, "the children to die with the supervisor")
        killed_at = time.monotonic()
        at_crash = {e.id: (e.event_id, e.payload) for e in DeadLetterStore(tmp_path / "dlq").entries()}
        assert before.items() <= at_crash.items(), "an entry parked before the crash changed or vanished"
        assert receiver.count() + len(at_crash) < count, "killed mid-stream"

        restarted = launch(profile)
        restarted.wait_ready()
        ready_after = time.monotonic() - killed_at
        assert restarted.wait(120) == 0, restarted.stderr()[-5000:]
        done_after = time.monotonic() - killed_at
    after_store = DeadLetterStore(tmp_path / "dlq")
    after = {e.id: (e.event_id, e.payload) for e in after_store.entries()}
    books = account(receiver, tmp_path / "dlq", count)
    print(f"supervisor SIGKILL while parking: {len(before)} entries before, {len(at_crash)} at the crash, "
          f"{len(after)} after; restarted ready {ready_after:.1f}s and done {done_after:.1f}s after the kill; {books}")
    assert at_crash.items() <= after.items(), "the restart lost or rewrote entries parked before the crash"
    assert after_store.corrupt == 0
    assert books.missing == [] and books.invented == [], str(books)
    assert not {n for n in books.delivered if (n - 1) // 500 % 2 == 1}, "a rejected event was delivered"
