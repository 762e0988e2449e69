"""The savegress-gw command line, run as ``python -m savegress_gw`` in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from savegress_gw import __version__
from savegress_gw.plugins import load_registry

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "config" / "profiles"
HELP_COMMANDS = [
    [], ["start"], ["validate"], ["schema"], ["plugins"], ["profiles"], ["profiles", "list"], ["profiles", "show"],
]


def _env() -> dict[str, str]:
    # The CLI reads SAVEGRESS_* overrides from the environment: keep the caller's out of these runs.
    return {k: v for k, v in os.environ.items()
            if not k.startswith("SAVEGRESS_") or k.startswith("SAVEGRESS_GW_")}


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "savegress_gw", *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every command this module checks, run concurrently before the tests look at the results."""
    work = tmp_path_factory.mktemp("cli")
    (work / "bad.yaml").write_text(
        "batching:\n  max_sise: 3\ncompression:\n  algorithm: lz5\ntracing:\n  enabled: true\n"
    )
    (work / "extra.yaml").write_text("compression:\n  algorithm: lz4\n  zstd:\n    level: 3\n")
    own_process = {  # exit status and output of a real `python -m savegress_gw` process
        "version": ["--version"],
        "quickstart": ["validate", "-c", str(ROOT / "config" / "quickstart.yaml")],
        "bad": ["validate", "-c", str(work / "bad.yaml")],
        "schema": ["schema"],
        "plugins": ["plugins"],
    }
    one_interpreter = {  # cli.main(argv) in turn in one more process: the same code, fewer interpreter starts
        "no-command": [],
        "print": ["validate", "-c", "low-latency", "--set", "batching.max_size=20", "--workers", "3", "--print"],
        "merge": ["validate", "-c", "at-most-once", "-c", str(work / "extra.yaml")],
        "missing": ["validate", "-c", str(work / "nope.yaml")],
        "profiles-list": ["profiles", "list"],
        "show": ["profiles", "show", "low-latency"],
        "show-unknown": ["profiles", "show", "low-latencyy"],
        **{"help " + " ".join(cmd): [*cmd, "--help"] for cmd in HELP_COMMANDS},
    }
    running = {name: _start(args, work) for name, args in own_process.items()}
    batch = subprocess.Popen([sys.executable, "-c", MAIN_SCRIPT, json.dumps(list(one_interpreter.values()))],
                             cwd=work, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {name: _finish(process) for name, process in running.items()}
    out, err = batch.communicate(timeout=120)
    assert batch.returncode == 0, err
    for (name, argv), (code, stdout, stderr) in zip(one_interpreter.items(), json.loads(out)):
        results[name] = subprocess.CompletedProcess(argv, code, stdout, stderr)
    return results


MAIN_SCRIPT = """
import contextlib, io, json, sys
from savegress_gw.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append((code, out.getvalue(), err.getvalue()))
print(json.dumps(results))
"""


def test_version(runs) -> None:
    result = runs["version"]
    assert result.returncode == 0
    assert result.stdout.strip() == f"savegress-gw {__version__}"


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help(runs, command: list[str]) -> None:
    result = runs["help " + " ".join(command)]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: savegress-gw {' '.join(command)}".rstrip())
    if not command:
        for name in ("start", "validate", "schema", "plugins", "profiles"):
            assert name in result.stdout
    if command in (["start"], ["validate"]):
        for option in ("--config", "--set", "--workers", "--log-level"):
            assert option in result.stdout
    if command == ["profiles"]:
        assert "list" in result.stdout and "show" in result.stdout


def test_no_command_is_a_usage_error(runs) -> None:
    result = runs["no-command"]
    assert result.returncode == 2
    assert "usage: savegress-gw" in result.stderr


def test_validate_quickstart(runs) -> None:
    result = runs["quickstart"]
    assert (result.returncode, result.stdout) == (0, "profile is valid\n"), result.stderr


def test_validate_bundled_profile_by_name_with_flags_and_print(runs) -> None:
    result = runs["print"]
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["batching"]["max_size"] == 20
    assert printed["batching"]["max_wait"] == "10ms"
    assert printed["gateway"]["workers"] == 3
    assert printed["compression"]["algorithm"] == "lz4"


def test_validate_lists_every_problem(runs) -> None:
    result = runs["bad"]
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "savegress-gw: invalid profile:"
    assert "  - batching.max_sise: unknown key; did you mean 'batching.max_size'?" in lines
    assert any(line.startswith("  - compression.algorithm: unknown compressor 'lz5'; did you mean 'lz4'?")
               for line in lines)
    assert any(line.startswith("  - not implemented yet: tracing") for line in lines)
    assert len(lines) == 4


def test_validate_merges_files_and_warns(runs) -> None:
    result = runs["merge"]
    assert result.returncode == 0, result.stderr
    assert "warning: compression.zstd: ignored" in result.stderr


def test_validate_missing_file(runs) -> None:
    result = runs["missing"]
    assert result.returncode == 2
    assert "nope.yaml: cannot read" in result.stderr


def test_schema_prints_json(runs) -> None:
    result = runs["schema"]
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["title"] == "savegress-gw profile"
    assert {"batching", "compression", "output", "source", "rate_limiting"} <= set(schema["properties"])


def test_plugins_lists_every_built_in_kind(runs) -> None:
    result = runs["plugins"]
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "ENTRY", "POINT", "DISTRIBUTION", "VERSION"]
    listed = {tuple(line.split()[:2]) for line in lines[1:]}
    registry = load_registry()
    expected = {(kind, name) for kind, by_name in registry.by_kind.items() for name in by_name}
    assert listed == expected
    kinds = {kind for kind, _ in listed}
    assert {"source", "compressor", "limiter", "backpressure", "sink"} <= kinds


def test_profiles_list(runs) -> None:
    result = runs["profiles-list"]
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == sorted(p.stem for p in PROFILES.glob("*.yaml"))
    low = next(line for line in result.stdout.splitlines() if line.startswith("low-latency "))
    assert "Low Latency profile" in low


def test_profiles_show_prints_the_file(runs) -> None:
    result = runs["show"]
    assert result.returncode == 0, result.stderr
    assert result.stdout == (PROFILES / "low-latency.yaml").read_text()


def test_profiles_show_unknown(runs) -> None:
    result = runs["show-unknown"]
    assert result.returncode == 2
    assert "no bundled profile 'low-latencyy'" in result.stderr
    assert "low-latency" in result.stderr.split("available:")[1]


# ------------------------------------------------------------------ what `start` hands the children


class _CapturedStart(Exception):
    def __init__(self, profile, data, registry) -> None:
        self.profile, self.data, self.registry = profile, data, registry


def _start_data(monkeypatch: pytest.MonkeyPatch, profile_path: Path) -> _CapturedStart:
    """Run ``savegress-gw start`` in-process up to the Supervisor, and capture what it is given."""
    import structlog

    import savegress_gw.logs
    import savegress_gw.supervisor
    from savegress_gw.cli import main

    def supervisor(profile, data, registry, *rest):
        raise _CapturedStart(profile, data, registry)

    monkeypatch.setattr(savegress_gw.supervisor, "Supervisor", supervisor)
    monkeypatch.setattr(savegress_gw.logs, "configure_logging", lambda settings, process: structlog.get_logger())
    with pytest.raises(_CapturedStart) as info:
        main(["start", "-c", str(profile_path)])
    return info.value


def test_start_hands_children_a_profile_that_validates_to_the_same(monkeypatch, tmp_path: Path) -> None:
    from savegress_gw.profile.model import validate_profile

    captured = _start_data(monkeypatch, ROOT / "config" / "quickstart.yaml")
    json.dumps(captured.data)  # plain data: it crosses the process boundary
    again = validate_profile(captured.data, captured.registry).profile
    assert again == captured.profile


def test_start_hands_children_the_real_auth_token(monkeypatch, tmp_path: Path) -> None:
    from savegress_gw.profile.model import validate_profile

    profile = tmp_path / "auth.yaml"
    profile.write_text("source:\n  type: http\n  auth_token: s3cret-token\n")
    captured = _start_data(monkeypatch, profile)
    again = validate_profile(captured.data, captured.registry).profile
    assert again.source.auth_token.get_secret_value() == "s3cret-token"


def test_start_hands_children_durations_they_can_read(monkeypatch, tmp_path: Path) -> None:
    from savegress_gw.profile.model import validate_profile

    profile = tmp_path / "odd.yaml"
    profile.write_text("batching:\n  max_wait: 1.2345678\n")
    captured = _start_data(monkeypatch, profile)
    again = validate_profile(captured.data, captured.registry).profile
    assert again.batching.max_wait == pytest.approx(1.2345678)
