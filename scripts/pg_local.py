#!/usr/bin/env python3
"""Throwaway local PostgreSQL (Debian packages) with ``wal_level=logical``, for tests and benches.

CLI (``start``/``stop``/``status`` take ``--dir``, default ``$SAVEGRESS_PG_DIR`` or
``./.postgres``)::

    python scripts/pg_local.py install                  # apt-get install postgresql, if missing
    python scripts/pg_local.py start --dir D [--port P] # initdb once, start, wait until ready
    python scripts/pg_local.py status --dir D           # exit 0 if running, else 3
    python scripts/pg_local.py stop --dir D [--mode fast|immediate|smart] [--remove]

Python API (pytest fixtures)::

    server = LocalPostgres(tmp_path / "pg")     # port=None picks a free port once
    server.start()
    server.execute("CREATE TABLE t (id int PRIMARY KEY)", dbname="postgres")
    server.create_database("app")
    psycopg2.connect(server.dsn(dbname="app"))
    server.add_hba("host all pwuser 127.0.0.1/32 scram-sha-256")   # prepended, then reloaded
    server.crash(); server.start()             # immediate stop (crash recovery on start)
    server.restart(); server.stop()
    server.remove()                            # stop and delete the cluster's files

Contracts:

* ``install`` is idempotent: when any ``/usr/lib/postgresql/*/bin/initdb`` exists it runs no
  process. Otherwise it runs ``apt-get update`` and ``apt-get install -y postgresql`` with
  ``DEBIAN_FRONTEND=noninteractive`` (root needed).
* The newest installed major version is used. The server refuses to run as root, so as root
  ``initdb`` and ``postgres`` run as the OS user ``postgres``.
* Layout: the cluster lives in its *home*, a fresh ``/tmp/sgpg-*`` directory owned by the server's
  user: ``home/data`` is PGDATA (``initdb -U postgres --auth=trust -E UTF8``) and ``home`` holds
  the unix socket (short path: sockets are limited to 107 bytes). Outside ``DIR`` because the
  server's user must traverse every parent, and pytest resets ``/tmp/pytest-of-root`` to 0700 at
  each session start. ``DIR`` holds ``pg_local.json`` (port, binaries, home), ``postgres.log``
  (server output, appended) and ``data``, a link to PGDATA. ``remove`` deletes the home; a
  ``start`` that creates a home first deletes orphans (see :func:`sweep_orphans`).
* Clients use TCP on 127.0.0.1, on a port chosen once and kept across restarts. Server settings
  (command line, so they hold after every restart): ``wal_level=logical``,
  ``max_replication_slots=20``, ``max_wal_senders=20``, ``fsync=off``, ``synchronous_commit=off``,
  ``full_page_writes=off``, ``track_commit_timestamp=on``.
* ``start`` returns when ``postmaster.pid`` reports ``ready``; on failure it stops the server
  and raises :class:`PostgresStartError` with the log tail. Through the Python API
  (``detach=False``) the kernel SIGKILLs the postmaster when the thread that started it exits
  (start it from the main thread or a long-lived one), and at interpreter exit it is stopped and
  its files are removed (a throwaway); the CLI starts a detached server that outlives it and
  keeps its files until ``stop --remove``.
* ``stop`` signals the postmaster (smart: SIGTERM, fast: SIGINT, immediate: SIGQUIT, PostgreSQL's
  own shutdown modes) and waits until it has exited; ``crash`` is an immediate stop.

Only the standard library is used, except ``execute``/``create_database``, which import
``psycopg2`` lazily.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import glob
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PG_OS_USER = "postgres"
SUPERUSER = "postgres"
STATE_FILE = "pg_local.json"
HOME_ROOT = "/tmp"
HOME_PREFIX = "sgpg-"
OWNER_FILE = "owner"  # in a home: the directory whose pg_local.json names it
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 60.0
LOG_TAIL_LINES = 40
SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "track_commit_timestamp": "on",
}


class PostgresLocalError(RuntimeError):
    """Base class of the errors raised by this module."""


class PostgresInstallError(PostgresLocalError):
    """PostgreSQL is not installed and could not be installed."""


class PostgresStartError(PostgresLocalError):
    """initdb failed, or the server did not become ready in time; the message has the log tail."""


# --------------------------------------------------------------------------- install


def find_bin_dir() -> Path | None:
    """The ``bin`` directory of the newest installed major version, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None

    def major(path: str) -> float:
        version = Path(path).parent.parent.name
        return float(version) if re.fullmatch(r"\d+(\.\d+)?", version) else -1.0

    return Path(max(found, key=major)).parent


def install() -> Path:
    """Make PostgreSQL's server binaries available (see module docstring); return their dir."""
    existing = find_bin_dir()
    if existing:
        return existing
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "-q", "postgresql"]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        except FileNotFoundError as exc:
            raise PostgresInstallError("apt-get not found: install PostgreSQL 15+ by hand") from exc
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise PostgresInstallError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    installed = find_bin_dir()
    if not installed:
        raise PostgresInstallError("apt-get installed postgresql but no initdb was found")
    return installed


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port free on 127.0.0.1, outside the kernel's ephemeral range when possible (so a
    restarted server does not find it taken by a client's outgoing connection)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    candidates = [p for p in range(10000, 60000) if not low <= p <= high]
    random.shuffle(candidates)
    for port in [*candidates[:200], 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise PostgresLocalError("no free TCP port on 127.0.0.1")


def _os_user() -> pwd.struct_passwd | None:
    """The account the server runs as: ``postgres`` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError as exc:
        raise PostgresLocalError(
            f"running as root but OS user {PG_OS_USER!r} does not exist "
            "(installing the postgresql package creates it)"
        ) from exc


def sweep_orphans(min_age: float = 600.0) -> list[Path]:
    """Delete cluster homes left behind by processes that died before ``remove``: homes whose
    owner directory no longer names them (pytest deletes old tmp dirs), whose server is not
    running, and that are older than ``min_age`` seconds. Returns what was deleted."""
    removed = []
    for home in Path(HOME_ROOT).glob(f"{HOME_PREFIX}*"):
        try:
            owner = Path((home / OWNER_FILE).read_text())
            if time.time() - home.stat().st_mtime < min_age:
                continue
            state_file = owner / STATE_FILE
            if state_file.is_file() and json.loads(state_file.read_text()).get("home") == str(home):
                continue
            pid_file = home / "data" / "postmaster.pid"
            if pid_file.is_file() and _pid_alive(int(pid_file.read_text().split("\n", 1)[0])):
                continue
        except (OSError, ValueError):
            continue  # no owner file (not ours, or being created) or unreadable: leave it
        shutil.rmtree(home, ignore_errors=True)
        removed.append(home)
    return removed


def _give_to(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen keyword arguments that run the child as ``user`` (None: as ourselves)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _set_pdeathsig() -> None:
    """preexec_fn: SIGKILL this child when its parent dies (Linux). Runs after the uid change,
    which would otherwise reset it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our unreaped child) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- server


class LocalPostgres:
    """One throwaway PostgreSQL cluster in ``directory`` (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        port: int | None = None,
        *,
        detach: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.log_file = self.directory / "postgres.log"
        self.detach = detach
        self.start_timeout = start_timeout
        state = self._read_state()
        self.port: int = port or state.get("port") or free_port()
        self.home: Path | None = Path(state["home"]) if state.get("home") else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    # -- state

    def _read_state(self) -> dict[str, Any]:
        path = self.directory / STATE_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def _write_state(self, bin_dir: Path) -> None:
        state = {"port": self.port, "bin_dir": str(bin_dir), "home": str(self.home)}
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @property
    def data_dir(self) -> Path:
        """PGDATA (``<home>/data``; ``DIR/data`` links to it)."""
        return (self.home or self.directory) / "data"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from ``postmaster.pid``), else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    # -- lifecycle

    def start(self) -> LocalPostgres:
        """initdb on first use, start the server, wait until it accepts connections."""
        if self.is_running():
            raise PostgresStartError(f"a server is already running on {self.data_dir}")
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresStartError("PostgreSQL is not installed: run scripts/pg_local.py install")
        user = _os_user()
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.home is None or not self.home.is_dir():
            sweep_orphans()
            self.home = Path(tempfile.mkdtemp(prefix=HOME_PREFIX, dir=HOME_ROOT))
            (self.home / OWNER_FILE).write_text(str(self.directory))
            _give_to(self.home, user)
            self._write_state(bin_dir)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(bin_dir, user)
        self._write_state(bin_dir)
        link = self.directory / "data"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(self.data_dir)
        options = {**SERVER_SETTINGS, "port": str(self.port),
                   "unix_socket_directories": str(self.home)}
        cmd = [str(bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in options.items():
            cmd += ["-c", f"{key}={value}"]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
                preexec_fn=None if self.detach else _set_pdeathsig,
                **_run_as(user),
            )
        if not self.detach and not self._atexit_registered:
            atexit.register(self._remove_at_exit)
            self._atexit_registered = True
        try:
            self._wait_ready(time.monotonic() + self.start_timeout)
        except PostgresStartError:
            self.stop("immediate")
            raise
        return self

    def _initdb(self, bin_dir: Path, user: pwd.struct_passwd | None) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(mode=0o700)
        _give_to(self.data_dir, user)
        cmd = [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
               "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, cwd=self.home, **_run_as(user)
        )
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            raise PostgresStartError(f"initdb failed ({proc.returncode}):\n{output}")

    def _wait_ready(self, deadline: float) -> None:
        """Until postmaster.pid's status line says ``ready`` (what ``pg_ctl -w`` waits for)."""
        assert self._proc is not None
        pid_file = self.data_dir / "postmaster.pid"
        while True:
            if self._proc.poll() is not None:
                raise PostgresStartError(
                    f"postgres exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                lines = pid_file.read_text().splitlines()
                ours = int(lines[0]) == self._proc.pid
                if ours and len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            if time.monotonic() >= deadline:
                raise PostgresStartError(
                    f"not ready after {self.start_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, mode: str = "fast", timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Shut down with PostgreSQL's ``mode`` (smart, fast, immediate); wait for the exit.
        A server that outlasts ``timeout`` is SIGKILLed. No-op when not running."""
        if mode not in SHUTDOWN_SIGNALS:
            raise ValueError(f"stop mode must be one of {sorted(SHUTDOWN_SIGNALS)}, not {mode!r}")
        pid = self.pid or (self._proc.pid if self._proc and self._proc.poll() is None else None)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, SHUTDOWN_SIGNALS[mode])
            deadline = time.monotonic() + timeout
            while self._alive(pid):
                if time.monotonic() >= deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    deadline = time.monotonic() + 10
                time.sleep(0.05)
        self._proc = None

    def remove(self) -> None:
        """Stop (immediate) and delete the cluster: its home, the state file and the link. The
        next ``start`` runs initdb again (on the same port)."""
        self.stop("immediate")
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None
        for path in (self.directory / STATE_FILE, self.directory / "data"):
            if path.is_symlink() or path.is_file():
                path.unlink()

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return _pid_alive(pid)

    def crash(self) -> None:
        """Immediate shutdown: no checkpoint, the next start runs crash recovery."""
        self.stop("immediate")

    def restart(self, mode: str = "fast") -> LocalPostgres:
        self.stop(mode)
        return self.start()

    def _remove_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.remove()

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- clients

    def dsn(
        self,
        user: str = SUPERUSER,
        dbname: str = "postgres",
        password: str | None = None,
        **extra: str,
    ) -> str:
        """A libpq keyword DSN for TCP on 127.0.0.1; ``extra`` adds keywords (e.g. options)."""
        params: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "user": user,
                                  "dbname": dbname, "connect_timeout": 10}
        if password is not None:
            params["password"] = password
        params.update(extra)
        return " ".join(f"{key}={_quote_dsn_value(str(value))}" for key, value in params.items())

    def execute(
        self, sql: str, params: Sequence[Any] | None = None, *, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser in autocommit; return its rows ([] if none)."""
        import psycopg2

        conn = psycopg2.connect(self.dsn(dbname=dbname))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description is not None else []
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (an identifier: quoted as is); return the name."""
        self.execute(f'CREATE DATABASE "{_identifier(name)}"')
        return name

    def add_hba(self, *lines: str) -> None:
        """Prepend pg_hba.conf lines (the first match wins) and reload the configuration."""
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("".join(f"{line}\n" for line in lines) + hba.read_text())
        self.reload()

    def reload(self) -> None:
        """SIGHUP the postmaster; connections opened after a short pause see the new config."""
        pid = self.pid
        if pid is None:
            raise PostgresLocalError(f"no server running on {self.data_dir}")
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.5)  # the postmaster re-reads its files asynchronously; no way to ask it


def _quote_dsn_value(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


# --------------------------------------------------------------------------- CLI


def _default_dir() -> str:
    return os.environ.get("SAVEGRESS_PG_DIR", ".postgres")


def _cmd_install(_args: argparse.Namespace) -> int:
    started = time.monotonic()
    bin_dir = install()
    print(f"postgresql binaries: {bin_dir} ({time.monotonic() - started:.1f}s)")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    started = time.monotonic()
    server = LocalPostgres(args.dir, args.port, detach=True, start_timeout=args.timeout).start()
    print(f"postgres ready in {time.monotonic() - started:.1f}s on 127.0.0.1:{server.port}")
    print(f"dsn: {server.dsn()}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    server = LocalPostgres(args.dir)
    pid = server.pid
    print(f"{'running' if pid else 'stopped'} pid={pid} port={server.port}")
    return 0 if pid else 3


def _cmd_stop(args: argparse.Namespace) -> int:
    server = LocalPostgres(args.dir)
    started = time.monotonic()
    server.stop(args.mode, args.timeout)
    if args.remove:
        server.remove()
    print(f"stopped ({args.mode}) in {time.monotonic() - started:.1f}s"
          + (", files removed" if args.remove else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Throwaway local PostgreSQL with wal_level=logical."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="apt-get install postgresql unless installed").set_defaults(
        func=_cmd_install
    )
    p_start = sub.add_parser("start", help="initdb (once) and start; wait until ready")
    p_start.add_argument("--dir", default=_default_dir())
    p_start.add_argument("--port", type=int, help="TCP port (default: kept, or a free one)")
    p_start.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    p_start.set_defaults(func=_cmd_start)
    p_stop = sub.add_parser("stop", help="shut the server down and wait")
    p_stop.add_argument("--dir", default=_default_dir())
    p_stop.add_argument("--mode", choices=sorted(SHUTDOWN_SIGNALS), default="fast")
    p_stop.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT)
    p_stop.add_argument("--remove", action="store_true", help="then delete the cluster's files")
    p_stop.set_defaults(func=_cmd_stop)
    p_status = sub.add_parser("status", help="exit 0 if running, else 3")
    p_status.add_argument("--dir", default=_default_dir())
    p_status.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PostgresLocalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
