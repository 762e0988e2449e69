"""Process tests of backup storage: a real gateway (generator → file sink) backs up the files of
its snapshot and archive directories while it runs, mirrors their deletion, and keeps delivering
everything when its S3 endpoint is unreachable (the guide's replication profile)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.harness.gateway import Gateway, free_port, wait_for
from tests.harness.verify import file_sink_events, verify_sequences

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NO_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
          "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def pipeline(tmp_path: Path, count: int, rate: int) -> dict:
    (tmp_path / "out").mkdir(exist_ok=True)
    return {
        "gateway": {"id": "gw", "workers": 1, "graceful_timeout": "10s"},
        "source": {"type": "generator", "count": count, "rate": rate, "row_size": 200},
        "output": {"type": "file", "path": str(tmp_path / "out" / "events.jsonl")},
        "batching": {"max_size": 500, "max_wait": "20ms"},
    }


def backed_up(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_files_are_backed_up_while_running_and_deletions_follow(tmp_path: Path) -> None:
    snapshots, pitr, backup = tmp_path / "snapshots" / "gw", tmp_path / "pitr" / "gw", tmp_path / "backup"
    snapshots.mkdir(parents=True)
    pitr.mkdir(parents=True)
    (snapshots / "test-snapshot-1.json").write_text('{"position": 1}')
    (snapshots / "test-snapshot-2.json.tmp").write_text("half written")
    (pitr / "test-segment-1.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"x" * 1000)
    profile = {
        **pipeline(tmp_path, count=1_000_000, rate=2_000),
        "snapshot": {"interval": "1h", "dir": str(tmp_path / "snapshots")},
        "pitr": {"enabled": True, "storage_dir": str(tmp_path / "pitr")},
        "storage": {"backend": "local", "local": {"path": str(backup), "sync_interval": "1s"}},
    }
    gateway = Gateway(tmp_path, profile).start()
    try:
        gateway.wait_ready()
        wait_for(lambda: {"gw/snapshots/test-snapshot-1.json", "gw/pitr/test-segment-1.jsonl.zst"}
                 <= backed_up(backup), 10, "the files to be backed up")
        assert "gw/snapshots/test-snapshot-2.json.tmp" not in backed_up(backup)
        assert (backup / "gw" / "pitr" / "test-segment-1.jsonl.zst").read_bytes() == \
            (pitr / "test-segment-1.jsonl.zst").read_bytes()

        (pitr / "test-segment-2.jsonl.open").write_bytes(b"being written")
        (snapshots / "test-snapshot-1.json").unlink()  # retention removed it
        (pitr / "test-segment-2.jsonl.open").rename(pitr / "test-segment-2.jsonl.zst")  # sealed
        wait_for(lambda: "gw/snapshots/test-snapshot-1.json" not in backed_up(backup)
                 and "gw/pitr/test-segment-2.jsonl.zst" in backed_up(backup), 10,
                 "the deletion and the sealed segment to reach the backup")
        assert gateway.metric("savegress_storage_syncs_total", 'backend="local"') >= 2
        assert gateway.metric("savegress_storage_sync_failures_total", 'backend="local"') == 0
        assert gateway.metric("savegress_storage_uploaded_files_total", 'backend="local"') >= 2
        assert gateway.metric("savegress_storage_last_success_age_seconds", 'backend="local"') < 5
        (snapshots / "written-at-shutdown.json").write_text("{}")
    finally:
        assert gateway.stop(60) == 0, gateway.stderr()
    assert "gw/snapshots/written-at-shutdown.json" in backed_up(backup), "the last pass runs at shutdown"
    assert "backup sync failed" not in gateway.stderr()


def test_replication_profile_with_an_unreachable_s3_delivers_everything_and_reports(tmp_path: Path) -> None:
    count = 30_000
    profile = yaml.safe_load((ROOT / "config" / "profiles" / "replication.yaml").read_text())
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    profile["storage"]["s3"]["endpoint"] = endpoint
    profile.update(pipeline(tmp_path, count=count, rate=5_000))
    gateway = Gateway(tmp_path, profile, env=NO_AWS).start()
    try:
        gateway.wait_ready()
        wait_for(lambda: gateway.metric("savegress_storage_sync_failures_total", 'backend="s3"') >= 1, 15,
                 "a failed sync to be counted")
        assert gateway.metric("savegress_storage_last_success_age_seconds", 'backend="s3"') > 0
        assert gateway.wait(60) == 0, gateway.stderr()
    finally:
        gateway.stop()
    sequences = [event["after"]["seq"] for event in file_sink_events(tmp_path / "out" / "events.jsonl")]
    verdict = verify_sequences(sequences, count)
    assert verdict.missing == [], str(verdict)
    failures = [line for line in gateway.stderr().splitlines() if "backup sync failed" in line]
    assert failures, gateway.stderr()
    assert "s3://savegress-backup" in failures[0] and endpoint in failures[0], failures[0]
