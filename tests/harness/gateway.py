"""Start ``savegress-gw start`` as a real process tree and observe it from outside."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


STARTED: list["Gateway"] = []
"""Every gateway a test started; tests/conftest.py kills what is still running after each test."""


def kill_leftovers() -> None:
    """SIGKILL the process group of every started gateway that is still running (a failed test)."""
    while STARTED:
        gateway = STARTED.pop()
        if gateway.process is not None and gateway.process.poll() is None:
            try:
                os.killpg(gateway.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            gateway.process.wait(10)


class Gateway:
    """One gateway process tree started from a profile dict."""

    def __init__(self, workdir: Path, profile: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.metrics_port = free_port()
        profile = dict(profile)
        profile.setdefault("metrics", {})["address"] = f"127.0.0.1:{self.metrics_port}"
        profile.setdefault("logging", {}).setdefault("format", "json")
        profile.setdefault("checkpoint", {}).setdefault("dir", str(workdir / "checkpoints"))
        self.profile_path = workdir / "profile.yaml"
        self.profile_path.write_text(yaml.safe_dump(profile))
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.stdout_path = workdir / "gateway.stdout"
        self.stderr_path = workdir / "gateway.stderr"

    def start(self, *extra: str) -> "Gateway":
        STARTED.append(self)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "savegress_gw", "start", "-c", str(self.profile_path), *extra],
            stdout=open(self.stdout_path, "ab"), stderr=open(self.stderr_path, "ab"), env=self.env,
            cwd=self.workdir, start_new_session=True,  # its own process group, as under a service manager
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.stderr()}")
            try:
                return requests.get(self.url("/health/ready"), timeout=1).status_code == 200
            except requests.RequestException:
                return False
        wait_for(ready, timeout, "the gateway to become ready")

    def metric(self, name: str, labels: str = "") -> float:
        """Current value of one metric sample (``labels`` like ``reason="rejected"``)."""
        text = requests.get(self.url("/metrics"), timeout=5).text
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(f"no sample {wanted} in /metrics")

    def workers(self) -> list[int]:
        return [pid for pid in children_of(self.pid) if "resource_tracker" not in cmdline(pid)
                and "spawn_main" in cmdline(pid)]

    def child(self, name: str, timeout: float = 60) -> int:
        """The pid of child ``name`` (``source``, ``worker-0``, ...), by its process name ``sg-<name>``;
        waits for it (a killed child's replacement) up to ``timeout``."""
        def find() -> int | None:
            for pid in self.workers():
                try:
                    if (Path("/proc") / str(pid) / "comm").read_text().strip() == f"sg-{name}"[:15]:
                        return pid
                except OSError:
                    continue
            return None
        return wait_for(find, timeout, f"child {name} of gateway {self.pid}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """Signal every process of the gateway at once (systemd's default KillMode, Ctrl-C)."""
        os.killpg(self.pid, signum)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""
