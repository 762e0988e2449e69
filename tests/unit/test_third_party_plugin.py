"""The third-party route end to end: pip-install examples/savegress-gw-example-sink and use it.

The package is installed with ``pip install --target`` into a temporary directory, so it is seen
only by the subprocesses that get that directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from savegress_gw.plugins import load_registry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "savegress-gw-example-sink"


def _backend_builds_wheels_here() -> bool:
    """Whether setuptools in this environment can build a wheel (``--no-build-isolation`` works).

    setuptools >= 70.1 has ``bdist_wheel`` itself; older ones need the ``wheel`` package.
    """
    try:
        import setuptools
    except ImportError:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1)


def _env(pythonpath: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed into a target directory (built from a copy: no build/ in the repo)."""
    work = tmp_path_factory.mktemp("third-party")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
               "--target", str(target), str(source)]
    if _backend_builds_wheels_here():
        command.insert(4, "--no-build-isolation")
    # else: pip builds in an isolated environment, with setuptools from the package index
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env(None), cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "savegress_gw_example_sink" / "__init__.py").is_file()
    assert list(target.glob("savegress_gw_example_sink-*.dist-info"))
    return target


DELIVER_SCRIPT = """
import sys, time
from savegress_gw.assembly import instantiate
from savegress_gw.components import Status
from savegress_gw.envelope import encode, normalize
from savegress_gw.plugins import load_registry
from savegress_gw.profile.model import validate_profile
from savegress_gw.testing import make_context

registry = load_registry()
profile = validate_profile({"output": {"type": "summary", "path": sys.argv[1]}}, registry).profile
sink = instantiate("sink", profile, registry)
sink.open(make_context(profile))
events = [normalize({"table": "users", "schema": "public", "operation": "insert", "after": {"id": 7}}, "t")]
outcomes = []
sink.send(encode(events, time.time_ns()), outcomes.append)
sink.close()
sink.close()
assert [o.status for o in outcomes] == [Status.DELIVERED], outcomes
print(type(sink).__module__)
"""


@pytest.fixture(scope="module")
def runs(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """The commands this module checks, run concurrently (with and without the package on PYTHONPATH)."""
    work = tmp_path_factory.mktemp("third-party-runs")
    (work / "summary.yaml").write_text(f"output:\n  type: summary\n  path: {work / 'summary.txt'}\n")
    (work / "typo.yaml").write_text("output:\n  type: summary\n  pth: x.txt\n")
    commands = {
        "plugins": (["-m", "savegress_gw", "plugins"], installed),
        "validate": (["-m", "savegress_gw", "validate", "-c", str(work / "summary.yaml")], installed),
        "typo": (["-m", "savegress_gw", "validate", "-c", str(work / "typo.yaml")], installed),
        "deliver": (["-c", DELIVER_SCRIPT, str(work / "delivered.txt")], installed),
        "not-installed": (["-m", "savegress_gw", "validate", "-c", str(work / "summary.yaml")], None),
    }
    running = {
        name: subprocess.Popen([sys.executable, *args], env=_env(path), cwd=work, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, (args, path) in commands.items()
    }
    results = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    results["work"] = work  # type: ignore[assignment]
    return results


def test_plugins_lists_the_third_party_sink(runs) -> None:
    result = runs["plugins"]
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["sink", "summary", "sink.summary", "savegress-gw-example-sink", "0.1.0"] in rows
    assert any(row[:2] == ["sink", "stdout"] and row[3] == "savegress-gw" for row in rows)  # built-ins still there


def test_validate_accepts_the_third_party_sink(runs) -> None:
    result = runs["validate"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "profile is valid"
    assert "warning" not in result.stderr


def test_unknown_key_of_the_third_party_sink_is_reported(runs) -> None:
    result = runs["typo"]
    assert result.returncode == 2
    assert "output.pth: unknown key; did you mean 'output.path'?" in result.stderr


def test_the_installed_sink_delivers(runs) -> None:
    result = runs["deliver"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "savegress_gw_example_sink"
    assert (runs["work"] / "delivered.txt").read_text() == "INSERT public.users users:7\n"


def test_without_the_package_summary_is_an_unknown_sink(runs) -> None:
    installed_sinks = load_registry().names("sink")
    assert "summary" not in installed_sinks
    result = runs["not-installed"]
    assert result.returncode == 2
    assert f"output.type: unknown sink 'summary' (installed: {', '.join(installed_sinks)})" in result.stderr
