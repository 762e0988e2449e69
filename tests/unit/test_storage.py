"""Backup storage with the local backend: the backend contract, the ready-file rule, sync passes
(uploads, sizes, deletions mirrored from local retention, the seen-file guard), restore, the CLI
and the background thread's failure counting. ``tests/integration/test_storage_s3.py`` runs the
same contract and scenarios against an S3 server (moto)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from savegress_gw.errors import EXIT_CONFIG_ERROR, EXIT_FAILURE, EXIT_OK
from savegress_gw.profile.model import validate_profile
from savegress_gw.plugins import load_registry
from savegress_gw.storage import Backend, StorageError, Syncer, SyncError, SyncRoot, is_ready, roots_for
from savegress_gw.storage.local import LocalBackend
from savegress_gw.storage.service import BackgroundSync, StorageCollector, storage_sync_for
from savegress_gw.storage.syncer import SEEN_FILE
from savegress_gw.storage_cli import add_storage_commands, run_storage_command


# ----------------------------------------------------------------- scenarios shared with the S3 test


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def check_backend_contract(backend: Backend, tmp_path: Path, prefix: str = "") -> None:
    """upload / list with sizes / download / delete on any backend."""
    a = write(tmp_path / "src" / "a.json", b"{}" * 10)
    b = write(tmp_path / "src" / "b.jsonl.zst", os.urandom(3000))
    backend.upload(a, f"{prefix}gw/snapshots/a.json")
    backend.upload(b, f"{prefix}gw/pitr/b.jsonl.zst")
    assert backend.list(f"{prefix}gw/") == {f"{prefix}gw/snapshots/a.json": 20, f"{prefix}gw/pitr/b.jsonl.zst": 3000}
    assert backend.list(f"{prefix}gw/pitr/") == {f"{prefix}gw/pitr/b.jsonl.zst": 3000}
    assert backend.list(f"{prefix}other/") == {}
    # overwrite: the new content replaces the old one
    write(a, b"[1, 2, 3]")
    backend.upload(a, f"{prefix}gw/snapshots/a.json")
    assert backend.list(f"{prefix}gw/snapshots/") == {f"{prefix}gw/snapshots/a.json": 9}
    out = tmp_path / "restored" / "deep" / "b.jsonl.zst"
    backend.download(f"{prefix}gw/pitr/b.jsonl.zst", out)
    assert out.read_bytes() == b.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["b.jsonl.zst"], "no temp file left behind"
    with pytest.raises(FileNotFoundError):
        backend.upload(tmp_path / "src" / "missing.json", f"{prefix}gw/snapshots/missing.json")
    backend.delete([f"{prefix}gw/snapshots/a.json", f"{prefix}gw/snapshots/never-there.json"])
    assert backend.list(f"{prefix}gw/") == {f"{prefix}gw/pitr/b.jsonl.zst": 3000}
    backend.delete([])


def make_roots(tmp_path: Path, prefix: str = "") -> list[SyncRoot]:
    return [SyncRoot("snapshots", tmp_path / "snapshots" / "gw", f"{prefix}gw/snapshots/", True),
            SyncRoot("pitr", tmp_path / "pitr" / "gw", f"{prefix}gw/pitr/", True)]


def check_sync_scenario(backend: Backend, tmp_path: Path, prefix: str = "") -> None:
    """Ready files up, sizes compared, not-ready files never, deletions mirrored, restore."""
    roots = make_roots(tmp_path, prefix)
    snapshots, pitr = roots[0].local_dir, roots[1].local_dir
    write(snapshots / "snapshot-0001.json", b'{"position": 1}')
    write(snapshots / "snapshot-0002.json", b'{"position": 2}')
    write(snapshots / "snapshot-0003.json.tmp", b"half")
    write(snapshots / ".hidden.json", b"x")
    write(pitr / "seg-0001.jsonl.zst", os.urandom(5000))
    write(pitr / "seg-0002.jsonl.open", b"being written")
    (pitr / "subdir").mkdir()
    write(pitr / "subdir" / "nested.jsonl.zst", b"not part of the layout")
    syncer = Syncer(backend, roots)

    first = syncer.sync_once()
    assert (first.uploaded, first.deleted, first.unchanged) == (3, 0, 0)
    assert first.uploaded_bytes == 15 + 15 + 5000
    assert backend.list(f"{prefix}gw/") == {f"{prefix}gw/snapshots/snapshot-0001.json": 15,
                                            f"{prefix}gw/snapshots/snapshot-0002.json": 15,
                                            f"{prefix}gw/pitr/seg-0001.jsonl.zst": 5000}

    second = syncer.sync_once()
    assert (second.uploaded, second.deleted, second.unchanged) == (0, 0, 3), "nothing changed: nothing sent"

    # the open segment is sealed (renamed), snapshot 1 expires, snapshot 2 is rewritten with another size
    (pitr / "seg-0002.jsonl.open").rename(pitr / "seg-0002.jsonl.zst")
    (snapshots / "snapshot-0001.json").unlink()
    write(snapshots / "snapshot-0002.json", b'{"position": 2, "more": true}')
    third = syncer.sync_once()
    assert (third.uploaded, third.deleted, third.unchanged) == (2, 1, 1)
    assert backend.list(f"{prefix}gw/") == {f"{prefix}gw/snapshots/snapshot-0002.json": 29,
                                            f"{prefix}gw/pitr/seg-0001.jsonl.zst": 5000,
                                            f"{prefix}gw/pitr/seg-0002.jsonl.zst": 13}

    # disaster: a new host with empty directories never deletes the backups it did not have ...
    new_host = make_roots(tmp_path / "new-host", prefix)
    empty = Syncer(backend, new_host).sync_once()
    assert (empty.uploaded, empty.deleted, empty.foreign) == (0, 0, 3)
    assert len(backend.list(f"{prefix}gw/")) == 3
    # ... and restores them, then mirrors local retention again
    restored = Syncer(backend, new_host).restore()
    assert (restored.downloaded, restored.kept_existing) == (3, 0)
    assert (new_host[1].local_dir / "seg-0001.jsonl.zst").read_bytes() == (pitr / "seg-0001.jsonl.zst").read_bytes()
    (new_host[1].local_dir / "seg-0001.jsonl.zst").unlink()
    after = Syncer(backend, new_host).sync_once()
    assert after.deleted == 1
    assert f"{prefix}gw/pitr/seg-0001.jsonl.zst" not in backend.list(f"{prefix}gw/")

    # restore keeps existing local files unless forced
    write(new_host[0].local_dir / "snapshot-0002.json", b"local")
    again = Syncer(backend, new_host).restore()
    assert again.kept_existing == 2 and again.downloaded == 0
    assert (new_host[0].local_dir / "snapshot-0002.json").read_bytes() == b"local"
    forced = Syncer(backend, new_host).restore(force=True)
    assert forced.downloaded == 2
    assert (new_host[0].local_dir / "snapshot-0002.json").read_bytes() == b'{"position": 2, "more": true}'


# ----------------------------------------------------------------- the local backend


def test_ready_file_rule() -> None:
    assert is_ready("snapshot-1.json") and is_ready("seg-00001.jsonl.zst") and is_ready("x")
    for name in (".snapshot.json", "snapshot.json.tmp", "seg.jsonl.open", ".seg.jsonl.zst", SEEN_FILE, ""):
        assert not is_ready(name), name


def test_local_backend_contract(tmp_path: Path) -> None:
    check_backend_contract(LocalBackend(tmp_path / "backup"), tmp_path)


def test_local_backend_lists_no_upload_in_progress_and_refuses_escaping_keys(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "backup")
    write(tmp_path / "backup" / "gw" / "pitr" / ".seg.jsonl.zst.123-ab.tmp", b"partial copy")
    assert backend.list("gw/") == {}
    for key in ("../escape", "/abs", "gw//x", "gw/./x"):
        with pytest.raises(StorageError, match="invalid key"):
            backend.upload(write(tmp_path / "f", b"1"), key)


def test_local_sync_scenario(tmp_path: Path) -> None:
    check_sync_scenario(LocalBackend(tmp_path / "backup"), tmp_path)
    # the layout on disk: <local.path>/<gateway id>/{snapshots,pitr}/<name>
    assert sorted(p.relative_to(tmp_path / "backup").as_posix() for p in (tmp_path / "backup").rglob("*")
                  if p.is_file()) == ["gw/pitr/seg-0002.jsonl.zst", "gw/snapshots/snapshot-0002.json"]


def test_disabled_roots_are_neither_uploaded_nor_pruned(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "backup")
    snapshots, pitr = make_roots(tmp_path)
    write(snapshots.local_dir / "s.json", b"1")
    write(pitr.local_dir / "p.jsonl.zst", b"2")
    Syncer(backend, [snapshots, pitr]).sync_once()
    (snapshots.local_dir / "s.json").unlink()
    write(pitr.local_dir / "q.jsonl.zst", b"3")
    off = SyncRoot("snapshots", snapshots.local_dir, snapshots.remote_prefix, False)
    result = Syncer(backend, [off, SyncRoot("pitr", pitr.local_dir, pitr.remote_prefix, False)]).sync_once()
    assert (result.uploaded, result.deleted) == (0, 0)
    assert set(backend.list("gw/")) == {"gw/snapshots/s.json", "gw/pitr/p.jsonl.zst"}


class FlakyBackend(LocalBackend):
    """A local backend whose uploads fail while ``broken``, and whose first upload finds its file
    deleted by retention (the race between listing and upload)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.broken = False
        self.vanish: Path | None = None

    def upload(self, path: Path, key: str) -> None:
        if self.vanish is not None and path == self.vanish:
            path.unlink()
            self.vanish = None
        if self.broken:
            raise StorageError(f"local backend {self.location}: upload {path} to {key}: disk full")
        super().upload(path, key)


def test_a_file_deleted_before_its_upload_is_skipped_and_a_failure_is_reported(tmp_path: Path) -> None:
    backend = FlakyBackend(tmp_path / "backup")
    roots = make_roots(tmp_path)
    write(roots[0].local_dir / "a.json", b"a")
    backend.vanish = write(roots[0].local_dir / "b.json", b"b")
    result = Syncer(backend, roots).sync_once()
    assert (result.uploaded, result.vanished) == (1, 1)
    write(roots[1].local_dir / "c.jsonl.zst", b"c")
    backend.broken = True
    with pytest.raises(SyncError, match="disk full") as failed:
        Syncer(backend, roots).sync_once()
    assert failed.value.partial.unchanged == 1
    backend.broken = False
    assert Syncer(backend, roots).sync_once().uploaded == 1


# ----------------------------------------------------------------- the background thread and metrics


class ListLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def bind(self, **_: Any) -> "ListLog":
        return self

    def _add(self, level: str, event: str, **fields: Any) -> None:
        self.records.append((level, event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, **fields)


def test_background_sync_counts_failures_retries_and_does_a_last_pass_at_stop(tmp_path: Path) -> None:
    backend = FlakyBackend(tmp_path / "backup")
    roots = make_roots(tmp_path)
    write(roots[0].local_dir / "a.json", b"a")
    backend.broken = True
    log = ListLog()
    service = BackgroundSync(Syncer(backend, roots), 0.2, log)
    service.start()
    try:
        deadline = time.monotonic() + 5
        while service.stats.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.stats.failures >= 2, "retried at the next interval"
        errors = [fields for level, event, fields in log.records if level == "error"]
        assert errors[0]["backend"] == "local" and errors[0]["location"] == str(tmp_path / "backup")
        assert "disk full" in errors[0]["error"]
        backend.broken = False
        deadline = time.monotonic() + 5
        while service.stats.last_success is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.stats.uploaded_files == 1
        write(roots[1].local_dir / "written-at-shutdown.jsonl.zst", b"z")
    finally:
        service.stop()
    assert "gw/pitr/written-at-shutdown.jsonl.zst" in backend.list("gw/"), "the last pass ran at stop"
    families = {f.name: f.samples[0] for f in StorageCollector(service, "savegress", {"env": "test"}).collect()}
    assert families["savegress_storage_sync_failures"].value >= 2
    assert families["savegress_storage_uploaded_files"].value == 2
    assert families["savegress_storage_uploaded_files"].labels == {"env": "test", "backend": "local"}
    assert families["savegress_storage_last_success_age_seconds"].value < 5


def test_an_inactive_node_does_not_sync(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    write(roots[0].local_dir / "a.json", b"a")
    service = BackgroundSync(Syncer(LocalBackend(tmp_path / "backup"), roots), 0.05, ListLog(), active=lambda: False)
    service.start()
    time.sleep(0.2)
    service.stop()
    assert service.stats.syncs == 0 and not (tmp_path / "backup").exists()


# ----------------------------------------------------------------- profile and CLI


def profile_file(tmp_path: Path, **extra: Any) -> Path:
    data = {
        "gateway": {"id": "gw"},
        "source": {"type": "generator", "count": 10},
        "output": {"type": "file", "path": str(tmp_path / "out.jsonl")},
        "snapshot": {"interval": "1h", "dir": str(tmp_path / "snapshots")},
        "pitr": {"enabled": True, "storage_dir": str(tmp_path / "pitr")},
        "storage": {"backend": "local", "local": {"path": str(tmp_path / "backup"), "sync_interval": "1s"}},
        **extra,
    }
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="savegress-gw")
    add_storage_commands(parser.add_subparsers(dest="command", required=True))
    return run_storage_command(parser.parse_args(["storage", *argv]))


def test_roots_and_service_from_a_profile(tmp_path: Path) -> None:
    data = yaml.safe_load(profile_file(tmp_path).read_text())
    profile = validate_profile(data, load_registry()).profile
    snapshots, pitr = roots_for(profile)
    assert (snapshots.local_dir, snapshots.remote_prefix, snapshots.enabled) == (tmp_path / "snapshots" / "gw",
                                                                                   "gw/snapshots/", True)
    assert (pitr.local_dir, pitr.remote_prefix, pitr.enabled) == (tmp_path / "pitr" / "gw", "gw/pitr/", True)
    s3 = validate_profile({**data, "storage": {"backend": "s3", "s3": {"bucket": "b"}}, "pitr": {},
                           "snapshot": {}}, load_registry()).profile
    snapshots, pitr = roots_for(s3)
    assert (snapshots.remote_prefix, snapshots.enabled, pitr.remote_prefix, pitr.enabled) == (
        "cdc/gw/snapshots/", False, "cdc/gw/pitr/", False)
    service = storage_sync_for(profile, ListLog())
    assert service is not None and service.interval == 1.0
    assert storage_sync_for(validate_profile({**data, "storage": {}}, load_registry()).profile, ListLog()) is None


def test_objects_another_node_uploaded_are_deleted_once_the_profile_retention_expires_them(tmp_path: Path) -> None:
    """After an HA failover the old leader's objects are foreign here (never in this directory):
    kept, except what the profile's own retention rule has expired (snapshots beyond
    ``retention_count``, archive segments older than ``pitr.retention``)."""
    data = yaml.safe_load(profile_file(tmp_path).read_text())
    data["snapshot"]["retention_count"] = 2
    data["pitr"].update(retention="1h", granularity="1m")
    profile = validate_profile(data, load_registry()).profile
    backend = LocalBackend(str(tmp_path / "backup"))
    old_leader = tmp_path / "old-leader"
    hour_ago = time.time() - 3600
    stale = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(hour_ago - 600))}-w0-0.jsonl.zst"
    recent = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(hour_ago + 600))}-w0-0.jsonl.zst"
    for name in ("20260101T000000Z.json", "20260101T010000Z.json", "20260101T020000Z.json"):
        backend.upload(write(old_leader / name, b"{}"), f"gw/snapshots/{name}")
    for name in (stale, recent, "not-a-segment.zst"):
        backend.upload(write(old_leader / name, b"x"), f"gw/pitr/{name}")
    snapshots, pitr = roots_for(profile)
    write(snapshots.local_dir / "20260101T030000Z.json", b"{}")  # this node's first snapshot

    first = Syncer(backend, [snapshots, pitr]).sync_once()
    assert (first.uploaded, first.deleted) == (1, 2), "the stale segment and the oldest of 3 snapshots (> 2)"
    assert set(backend.list("gw/pitr/")) == {f"gw/pitr/{recent}", "gw/pitr/not-a-segment.zst"}
    second = Syncer(backend, [snapshots, pitr]).sync_once()
    assert second.deleted == 1, "with this node's snapshot uploaded, one more old one is beyond 2"
    assert set(backend.list("gw/snapshots/")) == {"gw/snapshots/20260101T020000Z.json",
                                                  "gw/snapshots/20260101T030000Z.json"}, "the newest 2 remain"


def test_cli_sync_and_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = profile_file(tmp_path)
    write(tmp_path / "snapshots" / "gw" / "snapshot-1.json", b"{}")
    write(tmp_path / "pitr" / "gw" / "seg-1.jsonl.zst", b"zz")
    assert run_cli("sync", "-c", str(path)) == EXIT_OK
    assert "uploaded 2 files (4 bytes)" in capsys.readouterr().out
    assert (tmp_path / "backup" / "gw" / "pitr" / "seg-1.jsonl.zst").read_bytes() == b"zz"

    new_host = tmp_path / "new-host"
    new_host.mkdir()
    moved = profile_file(new_host, storage={"backend": "local", "local": {"path": str(tmp_path / "backup")}})
    write(new_host / "snapshots" / "gw" / "snapshot-1.json", b"mine")
    assert run_cli("restore", "-c", str(moved)) == EXIT_OK
    out = capsys.readouterr().out
    assert "downloaded 1 files (2 bytes), kept 1 existing local files (--force overwrites them)" in out
    assert (new_host / "pitr" / "gw" / "seg-1.jsonl.zst").read_bytes() == b"zz"
    assert (new_host / "snapshots" / "gw" / "snapshot-1.json").read_bytes() == b"mine"
    assert run_cli("restore", "-c", str(moved), "--force") == EXIT_OK
    assert (new_host / "snapshots" / "gw" / "snapshot-1.json").read_bytes() == b"{}"


def test_cli_reports_failures_and_a_missing_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = profile_file(tmp_path, storage={"backend": "none"})
    assert run_cli("sync", "-c", str(path)) == EXIT_CONFIG_ERROR
    assert "storage.backend: none" in capsys.readouterr().err
    blocker = write(tmp_path / "not-a-dir", b"a file where the backup directory should be")
    path = profile_file(tmp_path, storage={"backend": "local", "local": {"path": str(blocker)}})
    write(tmp_path / "snapshots" / "gw" / "snapshot-1.json", b"{}")
    assert run_cli("sync", "-c", str(path)) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "sync failed: local backend" in err and str(blocker) in err
