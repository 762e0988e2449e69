"""Checkpoints: atomic file store, memory store, switched off, unreadable files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from savegress_gw.checkpoint import CheckpointError, CheckpointStore
from savegress_gw.profile.settings import CheckpointSettings


def store(tmp_path: Path, source: str = "http", gateway: str = "gw-1", **settings) -> CheckpointStore:
    return CheckpointStore(CheckpointSettings(dir=str(tmp_path / "cp"), **settings), gateway, source)


@pytest.mark.parametrize("sync_mode", ["async", "sync"])
def test_file_store_round_trips_positions(tmp_path: Path, sync_mode: str) -> None:
    cp = store(tmp_path, sync_mode=sync_mode)
    assert cp.durable
    assert cp.load() is None  # nothing stored yet
    position = {"lsn": "0/16B3748", "lanes": [1, 2, 3]}
    cp.save(position)
    assert cp.path == tmp_path / "cp" / "gw-1.json"
    record = json.loads(cp.path.read_text())
    assert (record["source"], record["position"]) == ("http", position)
    assert record["updated_at"].endswith("Z")
    assert store(tmp_path, sync_mode=sync_mode).load() == position  # a new process reads it back
    cp.save(42)
    assert store(tmp_path).load() == 42
    assert sorted(os.listdir(tmp_path / "cp")) == ["gw-1.json"]  # no temporary file left behind


def test_portal_path_spelling_wins_over_dir(tmp_path: Path) -> None:
    cp = CheckpointStore(CheckpointSettings(dir=str(tmp_path / "a"), path=str(tmp_path / "b")), "gw", "http")
    cp.save(1)
    assert (tmp_path / "b" / "gw.json").is_file() and not (tmp_path / "a").exists()


def test_gateways_do_not_share_checkpoints(tmp_path: Path) -> None:
    store(tmp_path, gateway="one").save("a")
    store(tmp_path, gateway="two").save("b")
    assert (store(tmp_path, gateway="one").load(), store(tmp_path, gateway="two").load()) == ("a", "b")


def test_memory_store_keeps_positions_for_the_process_only(tmp_path: Path) -> None:
    cp = store(tmp_path, type="memory")
    assert not cp.durable
    assert cp.load() is None
    cp.save({"sequence": 7})
    assert cp.load() == {"sequence": 7}
    assert not (tmp_path / "cp").exists()
    assert store(tmp_path, type="memory").load() is None


def test_disabled_store_loads_nothing_and_writes_nothing(tmp_path: Path) -> None:
    cp = store(tmp_path, enabled=False)
    cp.save(5)
    assert cp.load() is None
    assert not (tmp_path / "cp").exists()


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]", '{"source": "http"}'])
def test_unreadable_checkpoint_names_the_file_and_how_to_reset(tmp_path: Path, content: str) -> None:
    cp = store(tmp_path)
    cp.path.parent.mkdir(parents=True)
    cp.path.write_text(content)
    with pytest.raises(CheckpointError) as info:
        cp.load()
    message = str(info.value)
    assert str(cp.path) in message
    assert "move it away" in message or "mv " in message


def test_checkpoint_of_another_source_type_is_refused(tmp_path: Path) -> None:
    store(tmp_path, source="generator").save(10)
    with pytest.raises(CheckpointError, match="belongs to a 'generator' source, not 'http'"):
        store(tmp_path, source="http").load()


def test_due_follows_the_interval(tmp_path: Path) -> None:
    cp = store(tmp_path, interval="10s")
    start = cp.saved_at
    assert not cp.due(start + 9.9)
    assert cp.due(start + 10.0)
    cp.save(1)
    assert not cp.due(cp.saved_at + 5)


def test_a_source_that_cannot_resume_stores_nothing(tmp_path: Path) -> None:
    cp = CheckpointStore(CheckpointSettings(dir=str(tmp_path / "cp")), "gw", "http", resumable=False)
    assert not cp.durable
    cp.save({"sequence": 3})
    assert cp.load() is None
    assert not (tmp_path / "cp").exists()
