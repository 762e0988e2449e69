"""Process test: a real gateway takes periodic state snapshots; restoring one rewinds it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.harness.gateway import Gateway
from tests.harness.verify import file_sink_events, verify_sequences

pytestmark = pytest.mark.slow

FIRST_COUNT, SECOND_COUNT = 30_000, 36_000
RATE = 7_500  # the first run reads for about 4 s


def profile(tmp_path: Path, count: int) -> dict:
    (tmp_path / "out").mkdir(exist_ok=True)
    return {
        "gateway": {"workers": 2, "graceful_timeout": "20s"},
        "source": {"type": "generator", "count": count, "rate": RATE, "row_size": 200},
        "output": {"type": "file", "path": str(tmp_path / "out" / "events.jsonl")},
        "batching": {"max_size": 500, "max_wait": "20ms"},
        "checkpoint": {"dir": str(tmp_path / "checkpoints"), "interval": "0.2s"},
        "snapshot": {"interval": "1s", "retention_count": 2, "dir": str(tmp_path / "snaps")},
    }


def sequences(tmp_path: Path) -> list[int]:
    return [event["after"]["seq"] for event in file_sink_events(tmp_path / "out" / "events.jsonl")]


def test_snapshots_are_taken_pruned_and_a_restore_redelivers_from_the_snapshot_position(tmp_path: Path) -> None:
    first = Gateway(tmp_path, profile(tmp_path, FIRST_COUNT)).start()
    assert first.wait(60) == 0, first.stderr()
    assert verify_sequences(sequences(tmp_path), FIRST_COUNT).duplicates == 0

    directory = tmp_path / "snaps" / "savegress-gw"
    files = sorted(directory.iterdir())
    assert [f.suffix for f in files] == [".json", ".json"], f"retention_count 2 keeps two: {files}"
    older, newer = (json.loads(f.read_text()) for f in files)
    assert older["source"] == newer["source"] == "generator" and older["gateway_id"] == "savegress-gw"
    assert 0 < older["position"] < newer["position"] <= FIRST_COUNT
    assert first.stderr().count('"state snapshot taken"') >= 3, "at least one older snapshot was pruned"
    assert "periodic state snapshots are skipped" not in first.stderr()

    listed = subprocess.run([sys.executable, "-m", "savegress_gw", "snapshot", "list", "-c", str(first.profile_path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:3]]
    assert [row[0] for row in rows] == [files[1].stem, files[0].stem], "newest first"
    assert [int(row[-1]) for row in rows] == [newer["position"], older["position"]]

    restored = subprocess.run(
        [sys.executable, "-m", "savegress_gw", "snapshot", "restore", "-c", str(first.profile_path), files[0].stem],
        capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert restored.returncode == 0, restored.stderr
    checkpoint = tmp_path / "checkpoints" / "savegress-gw.json"
    assert json.loads(checkpoint.read_text())["position"] == older["position"]
    assert json.loads(checkpoint.with_name("savegress-gw.json.bak").read_text())["position"] == FIRST_COUNT

    second = Gateway(tmp_path, profile(tmp_path, SECOND_COUNT)).start()
    assert second.wait(60) == 0, second.stderr()
    resumed = [line for line in map(_json, second.stderr().splitlines())
               if line.get("event") == "resuming from checkpoint"]
    assert [line["position"] for line in resumed] == [older["position"]], resumed
    delivered = sequences(tmp_path)
    verdict = verify_sequences(delivered, SECOND_COUNT)
    assert verdict.missing == [], str(verdict)
    counts = Counter(delivered)
    restored_at = older["position"]
    assert verdict.duplicates == FIRST_COUNT - restored_at, str(verdict)
    assert all(counts[seq] == 1 for seq in range(1, restored_at + 1)), "nothing before the snapshot again"
    assert all(counts[seq] == 2 for seq in range(restored_at + 1, FIRST_COUNT + 1)), \
        "everything after the snapshot's position delivered again"
    assert all(counts[seq] == 1 for seq in range(FIRST_COUNT + 1, SECOND_COUNT + 1))
    assert not [f for f in directory.iterdir() if f.name.endswith(".tmp")]


def _json(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        return {}
