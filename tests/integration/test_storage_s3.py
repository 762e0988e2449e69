"""The S3 backend against a real S3 server: moto's, started as a subprocess on 127.0.0.1 (there is
no AWS here). The same contract and sync scenarios as the local backend
(``tests/unit/test_storage.py``), and the bounded failure of an unreachable endpoint."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from savegress_gw.profile.recovery import S3Settings
from savegress_gw.storage import StorageError, Syncer, SyncError
from savegress_gw.storage.s3 import S3Backend
from tests.harness.gateway import free_port, wait_for
from tests.unit.test_storage import check_backend_contract, check_sync_scenario, make_roots, write

CREDENTIALS = {"access_key": "testing", "secret_key": "testing"}


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a moto S3 server running for this module."""
    port = free_port()
    launcher = shutil.which("moto_server")
    command = [launcher] if launcher else [sys.executable, "-m", "moto.server"]
    command += ["-H", "127.0.0.1", "-p", str(port)]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"moto_server exited with {server.returncode}: {log.read_text()}")
        try:
            return requests.get(endpoint, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    try:
        wait_for(up, 30, "moto_server to answer", interval=0.1)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture()
def bucket(moto_endpoint: str, request: pytest.FixtureRequest) -> S3Backend:
    """A fresh bucket (named after the test) and a backend on it."""
    name = "t-" + request.node.name.replace("_", "-")[:50].lower().strip("-")
    backend = S3Backend(S3Settings(bucket=name, endpoint=moto_endpoint, **CREDENTIALS))
    backend.client().create_bucket(Bucket=name)
    return backend


def test_s3_backend_contract(bucket: S3Backend, tmp_path: Path) -> None:
    check_backend_contract(bucket, tmp_path, prefix="cdc/")


def test_s3_sync_scenario(bucket: S3Backend, tmp_path: Path) -> None:
    check_sync_scenario(bucket, tmp_path, prefix="cdc/")


def test_a_large_file_goes_up_in_parts_and_comes_back_whole(bucket: S3Backend, tmp_path: Path) -> None:
    import os

    data = os.urandom(9 * 1024 * 1024)  # above boto3's 8 MiB multipart threshold
    write(tmp_path / "pitr" / "gw" / "big.jsonl.zst", data)
    result = Syncer(bucket, make_roots(tmp_path, "cdc/")).sync_once()
    assert result.uploaded_bytes == len(data)
    assert bucket.list("cdc/gw/pitr/") == {"cdc/gw/pitr/big.jsonl.zst": len(data)}
    bucket.download("cdc/gw/pitr/big.jsonl.zst", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_a_missing_bucket_fails_the_sync_naming_it(moto_endpoint: str, tmp_path: Path) -> None:
    backend = S3Backend(S3Settings(bucket="no-such-bucket", endpoint=moto_endpoint, **CREDENTIALS))
    write(tmp_path / "snapshots" / "gw" / "s.json", b"{}")
    with pytest.raises(SyncError, match="s3://no-such-bucket.*NoSuchBucket"):
        Syncer(backend, make_roots(tmp_path, "cdc/")).sync_once()


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:{closed}", "http://10.255.255.1:9000"],
                         ids=["refused", "blackholed"])
def test_an_unreachable_endpoint_fails_the_sync_within_seconds(endpoint: str, tmp_path: Path) -> None:
    endpoint = endpoint.format(closed=free_port())
    backend = S3Backend(S3Settings(bucket="savegress-backup", endpoint=endpoint, **CREDENTIALS))
    write(tmp_path / "snapshots" / "gw" / "s.json", b"{}")
    started = time.monotonic()
    with pytest.raises(StorageError) as failed:
        Syncer(backend, make_roots(tmp_path, "cdc/")).sync_once()
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"took {elapsed:.1f}s"
    message = str(failed.value)
    assert "s3://savegress-backup" in message and endpoint in message, message
