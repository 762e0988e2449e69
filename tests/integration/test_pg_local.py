"""scripts/pg_local.py: a real throwaway PostgreSQL: lifecycle, crash recovery, auth, no orphans."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from tests.harness.postgres import REPO, pg_local

pytestmark = pytest.mark.timeout(240)


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pg_local._pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_install_is_a_no_op_when_present() -> None:
    assert pg_local.install() == pg_local.find_bin_dir()


def test_start_crash_restart_stop(tmp_path: Path) -> None:
    server = pg_local.LocalPostgres(tmp_path / "pg")
    server.start()
    try:
        settings = dict(server.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', "
            "'max_replication_slots', 'max_wal_senders', 'fsync', 'track_commit_timestamp', "
            "'listen_addresses')"
        ))
        assert settings == {
            "wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20",
            "fsync": "off", "track_commit_timestamp": "on", "listen_addresses": "127.0.0.1",
        }
        assert server.execute("SELECT current_setting('server_encoding')") == [("UTF8",)]
        server.create_database("app")
        conn = psycopg2.connect(server.dsn(dbname="app"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = on")
            cur.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        conn.close()
        first_pid, port = server.pid, server.port

        server.crash()
        assert server.pid is None and wait_gone(first_pid)
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(server.dsn(dbname="app"))
        server.start()
        assert server.port == port and server.pid != first_pid
        assert server.execute("SELECT id FROM t", dbname="app") == [(1,)]
        assert "automatic recovery in progress" in server.log_tail(200)

        second_pid = server.pid
        server.restart()
        assert server.pid not in (None, second_pid)
        assert server.execute("SELECT count(*) FROM t", dbname="app") == [(1,)]
        server.stop()
        assert server.pid is None
        assert not (tmp_path / "pg" / "data" / "postmaster.pid").exists()
        home = server.home
        assert home is not None and (home / "data" / "PG_VERSION").is_file()
    finally:
        server.remove()
    assert not home.exists() and not (tmp_path / "pg" / "data").is_symlink()


def test_password_users_through_hba(postgres) -> None:
    postgres.execute("CREATE ROLE pwuser LOGIN PASSWORD 'right-pw'")
    try:
        postgres.add_hba("host all pwuser 127.0.0.1/32 scram-sha-256")
        failed = 'password authentication failed for user "pwuser"'
        with pytest.raises(psycopg2.OperationalError, match=failed):
            psycopg2.connect(postgres.dsn(user="pwuser", password="wrong"))
        conn = psycopg2.connect(postgres.dsn(user="pwuser", password="right-pw"))
        conn.close()
    finally:
        postgres.execute("DROP ROLE pwuser")


def test_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from tests.harness.postgres import pg_local;"
        "s = pg_local.LocalPostgres(sys.argv[2]).start(); print(s.pid, flush=True); time.sleep(600)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(REPO), str(tmp_path / "pg")], stdout=subprocess.PIPE
    )
    try:
        line = child.stdout.readline()
        assert line, "the child did not start a server"
        postmaster = int(line)
        assert pg_local._pid_alive(postmaster)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    try:
        assert wait_gone(postmaster), "postmaster outlived its parent"
    finally:
        pg_local.LocalPostgres(tmp_path / "pg").remove()


def test_cli_start_status_stop(tmp_path: Path) -> None:
    script = [sys.executable, str(REPO / "scripts" / "pg_local.py")]
    directory = str(tmp_path / "cli")
    started = subprocess.run(
        [*script, "start", "--dir", directory], capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stderr
    assert "dsn: host=127.0.0.1" in started.stdout
    try:
        status = subprocess.run(
            [*script, "status", "--dir", directory], capture_output=True, text=True
        )
        assert status.returncode == 0 and status.stdout.startswith("running")
    finally:
        stopped = subprocess.run(
            [*script, "stop", "--dir", directory], capture_output=True, text=True, timeout=120
        )
    assert stopped.returncode == 0, stopped.stderr
    status = subprocess.run([*script, "status", "--dir", directory], capture_output=True, text=True)
    assert status.returncode == 3
    home = pg_local.LocalPostgres(directory).home
    assert home is not None and home.is_dir()
    removed = subprocess.run([*script, "stop", "--remove", "--dir", directory], capture_output=True)
    assert removed.returncode == 0 and not home.exists()


def test_orphaned_homes_are_swept(tmp_path: Path) -> None:
    import json
    import os
    import tempfile

    def home(owner: Path, age: float) -> Path:
        path = Path(tempfile.mkdtemp(prefix=pg_local.HOME_PREFIX, dir=pg_local.HOME_ROOT))
        (path / pg_local.OWNER_FILE).write_text(str(owner))
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    gone = home(tmp_path / "deleted", age=3600)
    young = home(tmp_path / "deleted-too", age=0)
    (tmp_path / "kept").mkdir()
    named = home(tmp_path / "kept", age=3600)
    (tmp_path / "kept" / pg_local.STATE_FILE).write_text(json.dumps({"home": str(named)}))
    try:
        removed = pg_local.sweep_orphans()
        assert gone in removed and not gone.exists()
        assert young.exists() and named.exists()
    finally:
        for path in (gone, young, named):
            shutil.rmtree(path, ignore_errors=True)
