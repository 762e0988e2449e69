"""Reliability conformance (issue 4) against the file sink, made to fail for real.

The sink's file lives on a 64 MB tmpfs mounted by the test (root needed, else skipped); the test
fills it with a ``posix_fallocate``d filler file, so every ``write``/``flush`` of the sink fails
with ``ENOSPC`` — the sink's real error path (an ``OSError`` reported ERRORED, the active file
reopened with its torn tail cut) — and frees it by deleting the filler. The dead-letter queue and
the spill are on the ordinary disk. Scenarios as in :mod:`tests.system.test_conformance` (its
memory bound and ``launch`` fixture are reused): random failures (30 % of 100 ms ticks full), an
outage (6 s; 30 s with ``--soak``), SIGKILL of the supervisor mid-spill, and every dlq command
with a replay once space is back. Every event is accounted for: in the file (active file and
rotated segments), in the dead-letter queue, or missing (a failure).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from savegress_gw.compression import FILE_SUFFIX, decompress
from savegress_gw.deadletter import DeadLetterStore
from tests.harness.flaky_http import MB, Sampler, dir_size, dlq_cli, dlq_seqs, final_counters, gateway_probes, \
    listed_ids, log_lines, metric_probe, tree_rss_bytes
from tests.harness.gateway import alive, wait_for
from tests.harness.tiny_fs import CannotMount, Flapper, TinyFilesystem
from tests.harness.verify import verify_sequences
from tests.system.test_conformance import Launch, check_memory, launch  # noqa: F401  (launch is a fixture)

pytestmark = pytest.mark.slow
DECODE = {suffix: encoding for encoding, suffix in FILE_SUFFIX.items() if suffix}


@pytest.fixture()
def tiny_fs(tmp_path: Path) -> Iterator[TinyFilesystem]:
    fs = TinyFilesystem(tmp_path / "fs", 64 * MB)
    try:
        fs.mount()
    except CannotMount as exc:
        pytest.skip(f"cannot mount a tmpfs to fill up: {exc}")
    try:
        yield fs
    finally:
        fs.unmount()


def profile(tmp_path: Path, fs: TinyFilesystem, count: int, rate: float, **sections: Any) -> dict:
    data: dict[str, Any] = {
        "gateway": {"workers": 2, "graceful_timeout": "20s"},
        "source": {"type": "generator", "count": count, "rate": rate, "row_size": 300},
        "output": {"type": "file", "path": str(fs.path / "events.jsonl"),
                   "rotate": {"max_size": "4MB", "max_files": 100, "compress": True}},
        "replication": {"ack_mode": "leader"},
        "batching": {"max_size": 100, "max_wait": "20ms"},
        "retry": {"initial_delay": "20ms", "max_delay": "200ms", "multiplier": 2, "jitter": 0.1},
        "circuit_breaker": {"failure_threshold": 3, "success_threshold": 2, "timeout": "500ms",
                            "half_open_requests": 1},
    }
    data.update(sections)
    return data


def file_dlq(tmp_path: Path, **extra: Any) -> dict:
    return {"enabled": True, "type": "file", "base_dir": str(tmp_path / "dlq"), "max_retries": 3,
            "retry_delay": "20ms", **extra}


def written(fs: TinyFilesystem) -> list[int]:
    """``after.seq`` of every event in the sink's files (rotated segments first), leaving out a last
    line still being written (a reader of a live JSONL file must: it has no newline yet)."""
    path = fs.path / "events.jsonl"
    seqs: list[int] = []
    for candidate in segment_files(path) + ([path] if path.exists() else []):
        data = candidate.read_bytes()
        if candidate.suffix in DECODE:
            data = decompress(data, DECODE[candidate.suffix])
        lines = data.split(b"\n")[:-1]  # the part after the last newline is incomplete (or empty)
        seqs.extend(int(orjson.loads(line)["after"]["seq"]) for line in lines if line.strip())
    return seqs


def segment_files(path: Path) -> list[Path]:
    """The rotated segments of the file sink's ``path``, oldest first."""
    numbered = []
    for candidate in path.parent.glob(path.name + ".*"):
        number = candidate.name[len(path.name) + 1:].split(".", 1)[0]
        if number.isdigit() and not candidate.name.endswith("tmp"):
            numbered.append((int(number), candidate))
    return [p for _, p in sorted(numbered)]


# ---------------------------------------------------------------------------------------------
# 1. ENOSPC on a random 30 % of 100 ms ticks


def test_random_enospc_every_event_is_in_the_file_or_the_dlq_and_none_invented(tmp_path: Path, launch: Launch,
                                                                             tiny_fs: TinyFilesystem) -> None:
    count = 20_000
    gateway = launch(profile(tmp_path, tiny_fs, count, rate=5_000, dlq=file_dlq(tmp_path)))
    with Sampler(gateway_probes(gateway)) as sampler:
        gateway.wait_ready()
        ready_rss = tree_rss_bytes(gateway.pid)
        with Flapper(tiny_fs, p=0.3, seed=7) as flapper:
            wait_for(lambda: gateway.process.poll() is not None or len(written(tiny_fs)) >= count // 2, 60,
                     "half the events")
        assert gateway.wait(120) == 0, gateway.stderr()[-5000:]
    counters = final_counters(gateway)
    delivered, parked = written(tiny_fs), dlq_seqs(tmp_path / "dlq")
    verdict = verify_sequences(delivered + parked, count)
    errors = log_lines(gateway, "sink send failed, retrying")
    print(f"random ENOSPC ({flapper.full_ticks}/{flapper.ticks} ticks full): {verdict}; {len(parked)} parked, "
          f"{len(errors)} failed sends logged; counters {counters}")
    assert verdict.missing == [] and all(1 <= s <= count for s in delivered + parked), str(verdict)
    assert not set(delivered) & set(parked), "an event both written and parked"
    assert counters["sink_errors"] > 0 and errors, "the filesystem never failed a write"
    assert all("No space left on device" in line["reason"] for line in errors), {line["reason"] for line in errors}
    assert counters.get("events_dead_lettered", 0) == len(parked)
    check_memory(sampler.samples, ready_rss, "random ENOSPC")


# ---------------------------------------------------------------------------------------------
# 2. the filesystem full for a while, then space again


@pytest.mark.parametrize(("outage_s", "count"), [pytest.param(6.0, 24_000, id="6s"),
                                                  pytest.param(30.0, 108_000, id="30s", marks=pytest.mark.soak)])
def test_a_full_filesystem_loses_nothing_and_the_breaker_opens_and_closes(tmp_path: Path, launch: Launch,
                                                                          tiny_fs: TinyFilesystem, outage_s: float,
                                                                          count: int) -> None:
    """3,000 events/s of 1 KB; no dead-letter queue, so failing writes are retried until space is back.
    The 30 s soak offers 108 MB, which the 64 MB filesystem holds only rotated into 4 MB segments
    and compressed (about 0.5 MB each)."""
    data = profile(tmp_path, tiny_fs, count, rate=3_000)
    data["source"]["row_size"] = 1000
    gateway = launch(data)
    breaker = metric_probe(gateway, "savegress_circuit_breaker_state")
    with Sampler(gateway_probes(gateway, breaker=breaker)) as sampler:
        gateway.wait_ready()
        ready_rss = tree_rss_bytes(gateway.pid)
        wait_for(lambda: len(written(tiny_fs)) >= 3_000, 30, "events to flow")
        tiny_fs.fill()
        full_at = time.monotonic()
        wait_for(lambda: breaker() == 2, 15, "the breaker to open", interval=0.02)
        opened_after = time.monotonic() - full_at
        time.sleep(max(0.0, full_at + outage_s - time.monotonic()))
        before = len(written(tiny_fs))
        tiny_fs.free()
        freed_at = time.monotonic()
        wait_for(lambda: len(written(tiny_fs)) > before, 30, "the first write after the space came back",
                 interval=0.02)
        first_write_after = time.monotonic() - freed_at
        wait_for(lambda: breaker() == 0, 30, "the breaker to close", interval=0.02)
        closed_after = time.monotonic() - freed_at
        assert gateway.wait(120) == 0, gateway.stderr()[-5000:]
        finished_after = time.monotonic() - freed_at
    verdict = verify_sequences(written(tiny_fs), count)
    states = [s for _, s in sampler.samples.series["breaker"]]
    print(f"filesystem full {outage_s:g}s: {verdict}; breaker open {opened_after:.2f}s after it filled, first "
          f"write {first_write_after:.2f}s and breaker closed {closed_after:.2f}s after space came back, done "
          f"{finished_after:.1f}s after")
    assert verdict.missing == [], str(verdict)
    assert 2.0 in states and states[-1] == 0.0, states
    assert "No space left on device" in gateway.stderr()
    check_memory(sampler.samples, ready_rss, f"filesystem full {outage_s:g}s")


# ---------------------------------------------------------------------------------------------
# 3. SIGKILL of the supervisor while the full filesystem makes the gateway spill


def test_sigkill_mid_spill_then_restart_loses_nothing(tmp_path: Path, launch: Launch,
                                                      tiny_fs: TinyFilesystem) -> None:
    count = 30_000
    spill = tmp_path / "spill"
    data = profile(tmp_path, tiny_fs, count, rate=5_000, buffer={"size": 2000},
                   backpressure={"strategy": "buffer", "high_watermark": 0.5, "low_watermark": 0.2})
    data["buffer"]["overflow"] = {"path": str(spill), "max_size": 64 * MB}
    gateway = launch(data)
    gateway.wait_ready()
    wait_for(lambda: len(written(tiny_fs)) >= 2_000, 30, "events to flow")
    tiny_fs.fill()
    wait_for(lambda: dir_size(spill) >= 1 * MB, 60, "the spill to grow")
    children = gateway.workers()
    gateway.signal(signal.SIGKILL)
    gateway.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "the children to die with the supervisor")
    spilled_at_kill = dir_size(spill)
    tiny_fs.free()
    killed_at = time.monotonic()
    restarted = launch(data)
    restarted.wait_ready()
    ready_after = time.monotonic() - killed_at
    assert restarted.wait(120) == 0, restarted.stderr()[-5000:]
    done_after = time.monotonic() - killed_at
    verdict = verify_sequences(written(tiny_fs), count)
    print(f"SIGKILL mid-spill ({spilled_at_kill / MB:.1f} MB spilled): {verdict} (at least once: the spill and "
          f"everything after the last checkpoint come again); restarted ready {ready_after:.1f}s and done "
          f"{done_after:.1f}s after the kill")
    assert verdict.missing == [], str(verdict)
    assert "recovered frames spilled by a previous run" in restarted.stderr(), "the spill was read back"


# ---------------------------------------------------------------------------------------------
# 4. events parked while the disk is full; every dlq command; replay once there is space


def test_every_dlq_command_and_replay_after_space_is_back(tmp_path: Path, launch: Launch,
                                                          tiny_fs: TinyFilesystem) -> None:
    count = 300
    data = profile(tmp_path, tiny_fs, count, rate=0, dlq=file_dlq(tmp_path, max_retries=1),
                   batching={"max_size": 50, "max_wait": "10ms"},
                   circuit_breaker={"enabled": False})
    tiny_fs.fill()
    gateway = launch(data)
    assert gateway.wait(120) == 0, gateway.stderr()[-5000:]
    store = DeadLetterStore(tmp_path / "dlq")
    assert sorted(dlq_seqs(tmp_path / "dlq")) == list(range(1, count + 1)) and written(tiny_fs) == []

    listing = dlq_cli(gateway, "list")
    ids = listed_ids(listing.stdout)
    assert listing.returncode == 0 and len(ids) == count, listing.stdout + listing.stderr
    shown = json.loads(dlq_cli(gateway, "show", ids[0]).stdout)
    assert shown["reason"].endswith("No space left on device") and shown["attempts"] == 2
    assert 1 <= shown["event"]["after"]["seq"] <= count and shown["reason"].startswith(str(tiny_fs.path / "events.jsonl"))

    failed = dlq_cli(gateway, "replay", "--id", ids[0])  # still full: parked again as a new entry
    assert failed.returncode == 0, failed.stdout + failed.stderr
    assert store.count() == count and ids[0] not in listed_ids(dlq_cli(gateway, "list").stdout)

    tiny_fs.free()
    started = time.monotonic()
    replay = dlq_cli(gateway, "replay")
    replay_s = time.monotonic() - started
    assert replay.returncode == 0 and "0 entries left" in replay.stdout, replay.stdout + replay.stderr
    assert sorted(set(written(tiny_fs))) == list(range(1, count + 1))

    tiny_fs.fill()
    data["source"]["count"] = 2 * count
    again = launch(data)  # resumes after seq 300 from the checkpoint
    assert again.wait(120) == 0, again.stderr()[-5000:]
    # (a small append may still fit in the slack of the file's last tmpfs page: it is written, not parked)
    parked = set(dlq_seqs(tmp_path / "dlq"))
    assert parked | {n for n in written(tiny_fs) if n > count} == set(range(count + 1, 2 * count + 1))
    purge = dlq_cli(again, "purge", "--older-than", "0s")
    assert purge.returncode == 0 and f"purged {len(parked)} entries" in purge.stdout, purge.stdout + purge.stderr
    assert store.count() == 0
    print(f"dlq on a full disk: {count} parked, listed, shown, replayed in {replay_s:.1f}s once space was back; "
          f"{len(parked)} more purged")
