"""Periodic state snapshots: the store (take, prune, list, load), the source process's use of it
and ``savegress-gw snapshot list | restore``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from savegress_gw import state_snapshots
from savegress_gw.checkpoint import CheckpointStore
from savegress_gw.cli import main
from savegress_gw.plugins import collect_components, get_plugin_manager
from savegress_gw.profile.cdc import SnapshotSettings
from savegress_gw.profile.model import validate_profile
from savegress_gw.profile.settings import CheckpointSettings
from savegress_gw.source_process import Router, _state_snapshots
from savegress_gw.state_snapshots import SnapshotError, SnapshotNotFound, StateSnapshots

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
T0_NAME = "20260921T141320Z"


def record(position: Any, source: str = "generator") -> dict[str, Any]:
    return {"source": source, "position": position, "updated_at": "2026-09-21T14:13:20Z"}


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The wall clock the snapshot store sees: ``clock[0]`` seconds since the epoch."""
    now = [T0]
    monkeypatch.setattr(state_snapshots.time, "time", lambda: now[0])
    return now


def store(tmp_path: Path, **settings: Any) -> StateSnapshots:
    return StateSnapshots(SnapshotSettings(dir=str(tmp_path / "snaps"), interval=60, **settings), "gw-1",
                          started_at=0.0)


# ---------------------------------------------------------------------------------- the store


def test_take_writes_the_record_with_taken_at_and_gateway_id_under_dir_and_gateway_id(
        tmp_path: Path, clock: list[float]) -> None:
    snapshots = store(tmp_path)
    taken = snapshots.take(record(1234))
    assert taken.path == tmp_path / "snaps" / "gw-1" / f"{T0_NAME}.json"
    assert taken.name == T0_NAME
    assert json.loads(taken.path.read_text()) == {**record(1234), "taken_at": "2026-09-21T14:13:20Z",
                                                  "gateway_id": "gw-1"}
    assert os.listdir(tmp_path / "snaps" / "gw-1") == [f"{T0_NAME}.json"], "no temporary file is left"
    assert snapshots.last_position == 1234


def test_names_that_exist_get_a_numbered_suffix_and_list_is_newest_first(
        tmp_path: Path, clock: list[float]) -> None:
    snapshots = store(tmp_path, retention_count=10)
    names = [snapshots.take(record(n)).name for n in range(3)]  # the same second three times
    assert names == [T0_NAME, f"{T0_NAME}-1", f"{T0_NAME}-2"]
    clock[0] += 1
    later = snapshots.take(record(3)).name
    assert later == "20260921T141321Z"
    # "-" sorts before "." byte-wise, so a plain name sort would put T0_NAME after its -1 and -2
    assert snapshots.list() == [later, f"{T0_NAME}-2", f"{T0_NAME}-1", T0_NAME]
    assert [snapshots.load(name).position for name in snapshots.list()] == [3, 2, 1, 0]
    clock[0] += 10 ** 6  # the suffixes count up from 1 again for a new second
    assert snapshots.take(record(4)).name == "20261003T040001Z"


def test_suffixes_go_past_nine_in_order(tmp_path: Path, clock: list[float]) -> None:
    snapshots = store(tmp_path, retention_count=20)
    for n in range(12):
        snapshots.take(record(n))
    assert [snapshots.load(name).position for name in snapshots.list()] == list(range(11, -1, -1))


def test_take_prunes_the_oldest_beyond_retention_count_and_leaves_other_files(
        tmp_path: Path, clock: list[float]) -> None:
    snapshots = store(tmp_path, retention_count=2)
    directory = tmp_path / "snaps" / "gw-1"
    directory.mkdir(parents=True)
    (directory / "README.txt").write_text("operator notes")
    (directory / "notes.json").write_text("{}")
    for n in range(5):
        snapshots.take(record(n))
        clock[0] += 60
    assert [snapshots.load(name).position for name in snapshots.list()] == [4, 3]
    assert sorted(os.listdir(directory)) == sorted(
        ["README.txt", "notes.json", "20260921T141720Z.json", "20260921T141620Z.json"])


def test_list_and_load_without_any_snapshot(tmp_path: Path) -> None:
    snapshots = store(tmp_path)
    assert snapshots.list() == []
    with pytest.raises(SnapshotNotFound) as raised:
        snapshots.load(T0_NAME)
    assert raised.value.available == []


def test_load_refuses_missing_names_listing_the_others_and_names_outside_the_directory(
        tmp_path: Path, clock: list[float]) -> None:
    snapshots = store(tmp_path)
    snapshots.take(record(7))
    assert snapshots.load(f"{T0_NAME}.json").position == 7, "the file name works too"
    with pytest.raises(SnapshotNotFound, match="no state snapshot 20200101T000000Z in") as raised:
        snapshots.load("20200101T000000Z")
    assert raised.value.available == [T0_NAME]
    for bad in ["../gw-2/" + T0_NAME, "latest", f"{T0_NAME}.json.tmp", f"{T0_NAME}-0", ""]:
        with pytest.raises(ValueError, match="is not a state snapshot name"):
            snapshots.load(bad)


def test_load_reports_a_corrupt_snapshot_naming_the_file(tmp_path: Path, clock: list[float]) -> None:
    snapshots = store(tmp_path)
    path = snapshots.take(record(7)).path
    path.write_text("{torn")
    with pytest.raises(SnapshotError, match=f"{T0_NAME}.json is unreadable"):
        snapshots.load(T0_NAME)
    path.write_text(json.dumps({"position": 1}))
    with pytest.raises(SnapshotError, match="corrupted"):
        snapshots.load(T0_NAME)


def test_a_failed_write_leaves_neither_the_snapshot_nor_a_temporary_file(
        tmp_path: Path, clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = store(tmp_path)
    snapshots.take(record(1))
    clock[0] += 1

    def no_space(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_snapshots.os, "fsync", no_space)
    with pytest.raises(SnapshotError, match="No space left on device"):
        snapshots.take(record(2), now=100.0)
    assert os.listdir(snapshots.directory) == [f"{T0_NAME}.json"]
    assert snapshots.last_position == 1
    assert snapshots.last_at == 100.0, "a failed attempt also waits another interval"


def test_temporary_files_a_crash_left_are_deleted_by_the_next_take(tmp_path: Path, clock: list[float]) -> None:
    snapshots = store(tmp_path)
    snapshots.directory.mkdir(parents=True)
    (snapshots.directory / "20200101T000000Z.json.tmp").write_text('{"source": "gen')
    (snapshots.directory / f"{T0_NAME}.json.tmp").write_text("")  # the very name about to be written
    (snapshots.directory / "upload.tmp").write_text("")  # not ours: left alone
    assert snapshots.list() == [], "a temporary file is never a snapshot"
    snapshots.take(record(5))
    assert sorted(os.listdir(snapshots.directory)) == [f"{T0_NAME}.json", "upload.tmp"]
    assert snapshots.load(T0_NAME).position == 5


def test_the_write_goes_through_a_tmp_name_then_one_rename(
        tmp_path: Path, clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        renames.append((Path(src).name, Path(dst).name))
        assert json.loads(Path(src).read_text())["position"] == 9, "the temporary file is complete first"
        real_replace(src, dst)

    monkeypatch.setattr(state_snapshots.os, "replace", replace)
    store(tmp_path).take(record(9))
    assert renames == [(f"{T0_NAME}.json.tmp", f"{T0_NAME}.json")]


def test_due_by_interval_from_the_start_and_from_the_last_take(tmp_path: Path, clock: list[float]) -> None:
    snapshots = store(tmp_path)  # interval 60 s, started at monotonic 0
    assert not snapshots.due(59.9)
    assert snapshots.due(60.0)
    snapshots.take(record(1), now=75.0)
    assert not snapshots.due(134.0)
    assert snapshots.due(135.0)
    off = StateSnapshots(SnapshotSettings(dir=str(tmp_path)), "gw", started_at=0.0)
    assert not off.periodic and not off.due(10 ** 9)
    disabled = StateSnapshots(SnapshotSettings(dir=str(tmp_path), enabled=False, interval=1), "gw", started_at=0.0)
    assert not disabled.periodic and not disabled.due(10 ** 9)


def test_recall_remembers_the_newest_position_on_disk(tmp_path: Path, clock: list[float]) -> None:
    first = store(tmp_path)
    first.take(record(10))
    clock[0] += 1
    first.take(record(20))
    again = store(tmp_path)
    again.recall()
    assert again.last_position == 20


# ---------------------------------------------------------------------------------- the source process


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda message, **fields: self.lines.append((level, message, fields))


def _router(tmp_path: Path, snapshots: StateSnapshots | None, interval: float = 0.0) -> Router:
    """A Router with only what ``checkpoint_if_due`` uses; its checkpoint is due at every call (the
    tests pass times from ``time.monotonic()`` on, as the store measures on that clock)."""
    router = object.__new__(Router)
    router.checkpoint = CheckpointStore(CheckpointSettings(dir=str(tmp_path / "ck"), interval=interval),
                                        "gw-1", "generator")
    router.snapshots = snapshots
    router.metrics = SimpleNamespace(set=lambda *args, **kwargs: None)
    router.log = _Log()
    router.committed = None
    return router


def test_the_router_snapshots_the_checkpoint_it_just_saved_when_due_but_not_at_shutdown(
        tmp_path: Path, clock: list[float]) -> None:
    m = time.monotonic()
    snapshots = StateSnapshots(SnapshotSettings(dir=str(tmp_path / "snaps"), interval=10, retention_count=5),
                               "gw-1", started_at=m)
    router = _router(tmp_path, snapshots)
    router.committed = 100
    router.checkpoint_if_due(m + 5.0)  # checkpoint due, snapshot not yet
    assert snapshots.list() == []
    router.committed = 200
    router.checkpoint_if_due(m + 10.5)
    [name] = snapshots.list()
    copy = snapshots.load(name).record
    stored = json.loads(router.checkpoint.path.read_text())
    assert copy == {**stored, "taken_at": copy["taken_at"], "gateway_id": "gw-1"} and copy["position"] == 200
    router.committed = 300
    router.checkpoint_if_due(m + 12.0)  # checkpoint saved, but the snapshot waits for its interval
    router.checkpoint_if_due(m + 25.0, force=True)  # the final checkpoint: no snapshot
    assert json.loads(router.checkpoint.path.read_text())["position"] == 300
    assert len(snapshots.list()) == 1
    clock[0] += 1
    router.committed = 400
    router.checkpoint_if_due(m + 30.0)
    assert [snapshots.load(n).position for n in snapshots.list()] == [400, 200]
    assert [line[1] for line in router.log.lines] == ["state snapshot taken"] * 2


def test_the_router_takes_no_snapshot_of_a_position_that_did_not_move(tmp_path: Path, clock: list[float]) -> None:
    m = time.monotonic()
    snapshots = StateSnapshots(SnapshotSettings(dir=str(tmp_path / "snaps"), interval=10), "gw-1", started_at=m)
    router = _router(tmp_path, snapshots)
    router.committed = 100
    router.checkpoint_if_due(m + 11.0)
    clock[0] += 1
    router.checkpoint_if_due(m + 30.0)  # idle source: the same position again
    assert len(snapshots.list()) == 1
    assert snapshots.due(m + 31.0), "it stays due, and is taken as soon as the position moves"
    router.committed = 101
    router.checkpoint_if_due(m + 32.0)
    assert [snapshots.load(n).position for n in snapshots.list()] == [101, 100]


def test_a_failed_snapshot_is_logged_and_the_gateway_goes_on(tmp_path: Path, clock: list[float]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    m = time.monotonic()
    snapshots = StateSnapshots(SnapshotSettings(dir=str(blocker), interval=10), "gw-1", started_at=m)
    router = _router(tmp_path, snapshots)
    router.committed = 100
    router.checkpoint_if_due(m + 11.0)
    assert json.loads(router.checkpoint.path.read_text())["position"] == 100
    [(level, message, fields)] = router.log.lines
    assert level == "error" and message.startswith("state snapshot failed") and str(blocker) in fields["directory"]
    router.committed = 101
    router.checkpoint_if_due(m + 15.0)
    assert len(router.log.lines) == 1, "the next attempt waits another interval"


def _profile(data: dict[str, Any]) -> Any:
    return validate_profile(data, collect_components(get_plugin_manager())).profile


@pytest.mark.parametrize("source, checkpoint, reason", [
    ({"type": "http"}, {}, "source 'http' keeps no position to resume from"),
    ({"type": "generator"}, {"type": "memory"}, "checkpoint.type is memory"),
    ({"type": "generator"}, {"enabled": False}, "checkpoints are off"),
])
def test_snapshots_without_a_durable_position_are_skipped_with_one_warning(
        tmp_path: Path, source: dict[str, Any], checkpoint: dict[str, Any], reason: str) -> None:
    profile = _profile({"source": source, "checkpoint": {"dir": str(tmp_path), **checkpoint},
                        "snapshot": {"interval": "1h", "dir": str(tmp_path / "snaps")}})
    resumable = source["type"] != "http"
    store = CheckpointStore(profile.checkpoint, profile.gateway.id, source["type"], resumable=resumable)
    log = _Log()
    assert _state_snapshots(profile, store, log) is None
    [(level, message, _)] = log.lines
    assert level == "warning" and message.startswith("periodic state snapshots are skipped") and reason in message


def test_snapshots_are_built_for_a_resumable_source_with_file_checkpoints(tmp_path: Path) -> None:
    profile = _profile({"source": {"type": "generator"}, "checkpoint": {"dir": str(tmp_path)},
                        "snapshot": {"interval": "1h", "retention_count": 3, "dir": str(tmp_path / "snaps")}})
    store = CheckpointStore(profile.checkpoint, profile.gateway.id, "generator")
    log = _Log()
    snapshots = _state_snapshots(profile, store, log)
    assert snapshots is not None and snapshots.directory == tmp_path / "snaps" / "savegress-gw"
    assert [line[0] for line in log.lines] == ["info"]
    off = _profile({"source": {"type": "generator"}, "checkpoint": {"dir": str(tmp_path)}})
    assert _state_snapshots(off, store, log) is None and len(log.lines) == 1, "off: no warning"


# ---------------------------------------------------------------------------------- the commands


def _write_profile(tmp_path: Path, body: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(f"checkpoint: {{dir: {tmp_path / 'ck'}}}\nsnapshot: {{interval: 1h, dir: {tmp_path / 'snaps'}}}\n"
                    + body)
    return str(path)


def _take(tmp_path: Path, clock: list[float], *positions: Any, source: str = "generator") -> list[str]:
    """Snapshots of ``positions`` of the default gateway, one second apart; their names."""
    snapshots = StateSnapshots(SnapshotSettings(dir=str(tmp_path / "snaps"), interval=1), "savegress-gw")
    names = []
    for position in positions:
        names.append(snapshots.take(record(position, source)).name)
        clock[0] += 1
    return names


def test_list_prints_name_time_source_and_position_newest_first(
        tmp_path: Path, clock: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    profile = _write_profile(tmp_path, "source: {type: generator}\n")
    assert main(["snapshot", "list", "-c", profile]) == 0
    assert "0 state snapshots in" in capsys.readouterr().out
    old, new = _take(tmp_path, clock, 111, 222)
    assert main(["snapshot", "list", "-c", profile]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "TAKEN", "AT", "SOURCE", "POSITION"]
    assert lines[1].split() == [new, "2026-09-21T14:13:21Z", "generator", "222"]
    assert lines[2].split() == [old, "2026-09-21T14:13:20Z", "generator", "111"]
    assert lines[3] == f"2 state snapshots in {tmp_path / 'snaps' / 'savegress-gw'}"


def test_restore_moves_the_checkpoint_aside_and_stores_the_snapshot_position(
        tmp_path: Path, clock: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    profile = _write_profile(tmp_path, "source: {type: generator}\n")
    old, _ = _take(tmp_path, clock, 111, 222)
    current = tmp_path / "ck" / "savegress-gw.json"
    current.parent.mkdir()
    current.write_text(json.dumps(record(999)))
    assert main(["snapshot", "restore", "-c", profile, old]) == 0
    out = capsys.readouterr()
    assert f"restored state snapshot {old}" in out.out and "warning" not in out.err
    assert json.loads(current.read_text())["position"] == 111
    assert json.loads((tmp_path / "ck" / "savegress-gw.json.bak").read_text())["position"] == 999
    settings = CheckpointSettings(dir=str(tmp_path / "ck"))
    assert CheckpointStore(settings, "savegress-gw", "generator").load() == 111, "the gateway resumes there"


def test_restore_without_a_current_checkpoint(tmp_path: Path, clock: list[float]) -> None:
    profile = _write_profile(tmp_path, "source: {type: generator}\n")
    [name] = _take(tmp_path, clock, 5)
    assert main(["snapshot", "restore", "-c", profile, name]) == 0
    assert json.loads((tmp_path / "ck" / "savegress-gw.json").read_text())["position"] == 5
    assert not (tmp_path / "ck" / "savegress-gw.json.bak").exists()


def test_restore_refuses_a_missing_name_listing_the_available_ones(
        tmp_path: Path, clock: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    profile = _write_profile(tmp_path, "source: {type: generator}\n")
    assert main(["snapshot", "restore", "-c", profile, "20200101T000000Z"]) == 2
    assert "available: none" in capsys.readouterr().err
    old, new = _take(tmp_path, clock, 1, 2)
    assert main(["snapshot", "restore", "-c", profile, "20200101T000000Z"]) == 2
    assert f"no state snapshot 20200101T000000Z in {tmp_path / 'snaps' / 'savegress-gw'}; available: {new}, {old}" \
        in capsys.readouterr().err
    assert main(["snapshot", "restore", "-c", profile, "../../etc/passwd"]) == 2
    assert "is not a state snapshot name" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists(), "nothing was touched"


def test_restore_refuses_a_snapshot_of_another_source_type(
        tmp_path: Path, clock: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    profile = _write_profile(tmp_path, f"source: {{type: file, path: {tmp_path / 'in.jsonl'}}}\n")
    current = tmp_path / "ck" / "savegress-gw.json"
    current.parent.mkdir()
    current.write_text(json.dumps(record(4096, "file")))
    [name] = _take(tmp_path, clock, 77)
    assert main(["snapshot", "restore", "-c", profile, name]) == 2
    assert f"snapshot {name} holds a position of a 'generator' source, but the profile's source is 'file'" \
        in capsys.readouterr().err
    assert json.loads(current.read_text())["position"] == 4096 and not current.with_suffix(".json.bak").exists()


def test_restore_refuses_an_exactly_once_gateway(
        tmp_path: Path, clock: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    profile = _write_profile(tmp_path, "source: {type: kafka, brokers: ['localhost:9092'], topics: [a], group_id: g}\n"
                                       "output: {type: kafka, brokers: ['localhost:9092'], topic: b}\n"
                                       "exactly_once: {enabled: true}\n")
    [name] = _take(tmp_path, clock, {"a:0": 5}, source="kafka")
    assert main(["snapshot", "restore", "-c", profile, name]) == 2
    err = capsys.readouterr().err
    assert "exactly_once is enabled" in err and "savegress.checkpoints.savegress-gw" in err
    assert "cannot be restored" in err
    assert not (tmp_path / "ck").exists()
    assert main(["snapshot", "list", "-c", profile]) == 0, "listing is fine"


def test_restore_refuses_memory_checkpoints(
        tmp_path: Path, clock: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    profile = _write_profile(tmp_path, "source: {type: generator}\n")
    [name] = _take(tmp_path, clock, 5)
    assert main(["snapshot", "restore", "-c", profile, "--set", "checkpoint.type=memory", name]) == 2
    assert "keeps no checkpoint file" in capsys.readouterr().err


def test_restore_for_postgres_warns_that_the_slot_cannot_rewind(
        tmp_path: Path, clock: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    profile = _write_profile(tmp_path, "source: {type: postgres, database: db, slot_name: s, publication: p}\n")
    position = {"lsn": "0/16B3748", "sequence": 3, "end_lsn": "0/16B3700", "commit_us": 0, "schemas": {}}
    [name] = _take(tmp_path, clock, position, source="postgres")
    assert main(["snapshot", "restore", "-c", profile, name]) == 0
    err = capsys.readouterr().err
    assert "replication slot cannot rewind" in err and "confirmed_flush_lsn" in err
    assert json.loads((tmp_path / "ck" / "savegress-gw.json").read_text())["position"] == position

