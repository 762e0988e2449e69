"""Point-in-time recovery with real processes: a generator → file gateway archives what it
delivers (``pitr.granularity: 1s``); ``savegress-gw pitr replay`` sends it through a second file
sink. Every delivered event must be in the archive and come back in the replay, also after a
worker was SIGKILLed mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import yaml

from savegress_gw.pitr.layout import format_stamp, list_segments
from savegress_gw.pitr.reader import read_lines
from tests.harness.gateway import Gateway, wait_for
from tests.harness.verify import file_sink_events, verify_sequences

GATEWAY_ID = "pitr-sys"


def pitr_profile(tmp_path: Path, count: int, rate: int) -> dict[str, Any]:
    (tmp_path / "out").mkdir(exist_ok=True)
    return {
        "gateway": {"id": GATEWAY_ID, "workers": 2, "graceful_timeout": "20s", "heartbeat_timeout": "5s"},
        "source": {"type": "generator", "count": count, "rate": rate, "row_size": 200, "key_space": 500},
        "output": {"type": "file", "path": str(tmp_path / "out" / "events.jsonl")},
        "batching": {"max_size": 500, "max_wait": "20ms"},
        "parallel": {"table_parallelism": 8},
        "pitr": {"enabled": True, "granularity": "1s", "storage_dir": str(tmp_path / "pitr")},
    }


def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "pitr" / GATEWAY_ID


def archived_events(tmp_path: Path, since_bucket: int = 0) -> list[dict]:
    return [orjson.loads(line) for segment in list_segments(archive_dir(tmp_path)) if segment.bucket >= since_bucket
            for line in read_lines(segment)]


def seqs(events: list[dict]) -> list[int]:
    return [event["after"]["seq"] for event in events]


def replay(tmp_path: Path, profile: dict[str, Any], name: str, *args: str) -> list[dict]:
    """Run ``pitr replay`` of ``profile`` into ``<name>.jsonl``; return what that sink got."""
    out = tmp_path / "out" / f"{name}.jsonl"
    replay_profile = {**profile, "output": {**profile["output"], "path": str(out)}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(replay_profile))
    done = subprocess.run([sys.executable, "-m", "savegress_gw", "pitr", "replay", "-c", str(path), *args],
                          cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return file_sink_events(out)


def iso(unix_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def in_key_order(events: list[dict]) -> bool:
    last: dict[Any, int] = defaultdict(int)
    for event in events:
        key, seq = event["after"]["id"], event["after"]["seq"]
        if seq <= last[key]:
            return False
        last[key] = seq
    return True


def test_replay_from_the_start_and_from_a_mid_bucket_returns_every_delivered_event(tmp_path: Path) -> None:
    profile = pitr_profile(tmp_path, 0, rate=5_000)
    gateway = Gateway(tmp_path, profile).start()
    try:
        gateway.wait_ready()
        time.sleep(4)
        assert gateway.metric("savegress_events_archived_total") > 0
        assert gateway.metric("savegress_archive_segments_sealed_total") > 0
    finally:
        assert gateway.stop() == 0, gateway.stderr()
    delivered = seqs(file_sink_events(tmp_path / "out" / "events.jsonl"))
    assert len(delivered) > 5_000
    upto = max(delivered)
    assert verify_sequences(delivered, upto).missing == []
    segments = list_segments(archive_dir(tmp_path))
    assert segments and all(s.sealed for s in segments)  # a graceful stop seals the last segments
    buckets = sorted({s.bucket for s in segments})
    assert len(buckets) >= 3, [s.path.name for s in segments]
    assert {s.worker for s in segments} == {0, 1}
    archived = archived_events(tmp_path)
    verdict = verify_sequences(seqs(archived), upto)
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)

    listing = subprocess.run([sys.executable, "-m", "savegress_gw", "pitr", "list", "-c", str(gateway.profile_path)],
                             cwd=tmp_path, capture_output=True, timeout=60, text=True)
    assert listing.returncode == 0, listing.stderr
    assert f"{len(segments)} segments in" in listing.stdout and "sealed" in listing.stdout

    everything = replay(tmp_path, yaml.safe_load(gateway.profile_path.read_text()), "replay-all",
                        "--from", iso(buckets[0]))
    verdict = verify_sequences(seqs(everything), upto)
    print(f"replay from the start: {verdict}")
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    assert in_key_order(everything)
    assert all(event["id"] == f"gen-{event['after']['seq']}" for event in everything[:100])

    middle = buckets[len(buckets) // 2]
    later = replay(tmp_path, yaml.safe_load(gateway.profile_path.read_text()), "replay-mid",
                   "--from", iso(middle)[:-1] + ".500Z")  # inside the bucket: the replay starts at its beginning
    expected = sorted(seqs(archived_events(tmp_path, since_bucket=middle)))
    assert sorted(seqs(later)) == expected
    assert min(expected) > 1 and min(seqs(later)) == min(expected)
    assert in_key_order(later)
    assert not (tmp_path / "pitr" / f"{GATEWAY_ID}-pitr-replay").exists()  # replays are not archived
    assert (tmp_path / "checkpoints" / f"{GATEWAY_ID}-pitr-replay.json").exists()  # a checkpoint of their own
    assert format_stamp(middle) in {s.stem[:16] for s in segments}


def test_after_a_worker_sigkill_the_archive_still_holds_every_delivered_event(tmp_path: Path) -> None:
    count = 150_000
    profile = pitr_profile(tmp_path, count, rate=30_000)
    gateway = Gateway(tmp_path, profile).start()
    try:
        gateway.wait_ready()
        out = tmp_path / "out" / "events.jsonl"
        wait_for(lambda: out.exists() and out.stat().st_size > 2_000 * 200, 30, "events to reach the file")
        victim = gateway.child("worker-1")
        os.kill(victim, signal.SIGKILL)
        assert gateway.wait(60) == 0, gateway.stderr()
    finally:
        gateway.stop()
    delivered = verify_sequences(seqs(file_sink_events(tmp_path / "out" / "events.jsonl")), count)
    assert delivered.missing == [], str(delivered)
    archived = verify_sequences(seqs(archived_events(tmp_path)), count)
    print(f"worker SIGKILL: sink {delivered}; archive {archived}")
    assert archived.missing == [], str(archived)
    assert "archive segment left open by a crashed worker sealed" in gateway.stderr()  # by its replacement
    assert all(s.sealed for s in list_segments(archive_dir(tmp_path)))
