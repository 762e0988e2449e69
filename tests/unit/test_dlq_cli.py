"""``savegress-gw dlq``: list, show, purge and the replay profile, through ``run_dlq_command``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from savegress_gw.deadletter import DeadLetterStore
from savegress_gw.dlq_cli import add_dlq_commands, dlq_directory, replay_profile, run_dlq_command
from savegress_gw.envelope import encode
from savegress_gw.errors import EXIT_CONFIG_ERROR, EXIT_FAILURE, EXIT_OK
from savegress_gw.profile.model import validate_profile
from savegress_gw.profile.settings import DlqSection
from savegress_gw.testing import make_context, registry_of
from savegress_gw_plugins.dlq import file as file_module
from savegress_gw_plugins.dlq.file import FileDeadLetterQueue
from savegress_gw_plugins.sinks import stdout as stdout_module
from savegress_gw_plugins.sources import dlq_replay as replay_module

DAY_NS = 86_400 * 10**9


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="savegress-gw")
    add_dlq_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["dlq", *argv])


def park(directory: Path, first: int, count: int, reason: str = "HTTP 400: rejected by the destination") -> None:
    queue = FileDeadLetterQueue(FileDeadLetterQueue.Config(base_dir=str(directory)))
    queue.open(make_context())
    queue.put(encode([{"id": f"evt-{i}", "source": "test", "schema": "public", "table": "users",
                       "operation": "DELETE", "timestamp": "2025-01-15T10:30:00.000000Z", "before": {"id": i}}
                      for i in range(first, first + count)], time.time_ns()), reason, 5, "gw/worker-0")
    queue.close()


def profile_file(tmp_path: Path, dlq: dict[str, Any] | None, output: str = "stdout") -> str:
    data: dict[str, Any] = {"source": {"type": "generator"}, "output": {"type": output}}
    if dlq is not None:
        data["dlq"] = dlq
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_list_prints_one_row_per_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    park(tmp_path, 0, 2, reason="KafkaException: " + "x" * 200)
    assert run_dlq_command(parse("list", "--dir", str(tmp_path))) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "PARKED", "AT", "TABLE", "OPERATION", "ATTEMPTS", "REASON"]
    rows = [line.split() for line in lines[1:3]]
    assert [row[0] for row in rows] == [e.id for e in DeadLetterStore(tmp_path).entries()]
    assert all(row[2:5] == ["public.users", "DELETE", "5"] for row in rows)
    assert all(row[1].endswith("Z") and len(row[1]) == 20 for row in rows)
    assert all(len(" ".join(row[5:])) == 60 and row[-1].endswith("…") for row in rows)  # reasons cut
    assert lines[3] == f"2 entries in {tmp_path}"


def test_list_finds_the_directory_through_the_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    park(tmp_path / "dlq", 0, 3)
    config = profile_file(tmp_path, {"base_dir": str(tmp_path / "dlq")})
    assert run_dlq_command(parse("list", "-c", config)) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[-1] == f"3 entries in {tmp_path / 'dlq'}"


@pytest.mark.parametrize(("dlq", "output", "message"), [
    (None, "stdout", "no dlq section"),
    ({"enabled": False}, "stdout", "switches the dead-letter queue off"),
])
def test_profiles_without_a_queue_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   dlq: dict[str, Any] | None, output: str, message: str) -> None:
    assert run_dlq_command(parse("list", "-c", profile_file(tmp_path, dlq, output))) == EXIT_CONFIG_ERROR
    assert message in capsys.readouterr().err


def test_an_unreachable_kafka_queue_fails_naming_the_cluster(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"source": {"type": "generator"},
                                    "output": {"type": "kafka", "brokers": ["127.0.0.1:9"], "topic": "events"},
                                    "dlq": {"type": "kafka", "timeout": "1s"}}))
    assert run_dlq_command(parse("list", "-c", str(path))) == EXIT_FAILURE
    assert "cannot reach 127.0.0.1:9" in capsys.readouterr().err


def test_a_directory_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_dlq_command(parse("list")) == EXIT_CONFIG_ERROR
    assert "-c FILE" in capsys.readouterr().err


def test_show_prints_the_entry_and_its_event_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    park(tmp_path, 0, 2)
    entry_id = [e.id for e in DeadLetterStore(tmp_path).entries()][1]
    assert run_dlq_command(parse("show", entry_id, "--dir", str(tmp_path))) == EXIT_OK
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["id"] == entry_id and shown["event_id"] == "evt-1"
    assert shown["reason"] == "HTTP 400: rejected by the destination" and shown["error_class"] == "HTTP 400"
    assert shown["attempts"] == 5 and shown["origin"] == "gw/worker-0"
    assert shown["event"]["before"] == {"id": 1} and shown["event"]["operation"] == "DELETE"


@pytest.mark.parametrize("entry_id", ["dlq-00000001:999", "nonsense"])
def test_show_of_an_unknown_entry_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str], entry_id: str) -> None:
    park(tmp_path, 0, 1)
    assert run_dlq_command(parse("show", entry_id, "--dir", str(tmp_path))) == EXIT_FAILURE
    assert entry_id in capsys.readouterr().err


def test_purge_removes_entries_older_than_the_duration(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: now)
    park(tmp_path, 0, 3)
    now += 8 * DAY_NS
    park(tmp_path, 3, 2)
    assert run_dlq_command(parse("purge", "--older-than", "7d", "--dir", str(tmp_path))) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"purged 3 entries older than 7d from {tmp_path}"
    assert [e.event_id for e in DeadLetterStore(tmp_path).entries()] == ["evt-3", "evt-4"]


def test_purge_needs_a_valid_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("purge", "--older-than", "soon", "--dir", "x")
    assert "invalid duration" in capsys.readouterr().err


def test_help_names_both_backends(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "file queue's directory" in text and "Kafka dead-letter topic" in text
    assert all(action in text for action in ("list", "show", "replay", "purge"))


def test_replay_profile_swaps_the_source_and_keeps_the_rest() -> None:
    data = {"source": {"type": "http", "port": 8080, "tables": ["public.*"]}, "output": {"type": "stdout"},
            "dlq": {"base_dir": "/var/lib/savegress/dlq"}, "gateway": {"id": "orders", "workers": 2},
            "metrics": {"address": "127.0.0.1:9000"}}
    replay = replay_profile(data, ["dlq-00000001:0"])
    assert replay["source"] == {"type": "dlq_replay", "base_dir": "/var/lib/savegress/dlq", "ids": ["dlq-00000001:0"]}
    assert replay["gateway"] == {"id": "orders-dlq-replay", "workers": 2}
    assert replay["metrics"] == {"address": "127.0.0.1:9000", "enabled": False}
    assert replay["output"] == data["output"] and replay["dlq"] == data["dlq"]
    assert data["gateway"]["id"] == "orders"  # the input is not changed
    assert replay_profile({"dlq": None}, [])["source"] == {"type": "dlq_replay", "base_dir": "./data/dlq"}
    assert dlq_directory({"dlq": {"type": "file", "base_dir": "d"}, "output": {"type": "kafka"}}) == "d"
    kafka = replay_profile({"output": {"type": "kafka"}, "dlq": {"topic": "x.dlq"}}, ["p0:12"])
    assert kafka["source"] == {"type": "dlq_replay", "ids": ["p0:12"]}  # the profile's own queue
    exactly_once = replay_profile({"output": {"type": "kafka"}, "dlq": {}, "exactly_once": {"enabled": True}}, [])
    assert exactly_once["exactly_once"] == {"enabled": False}  # a replay is at least once
    ha = replay_profile({"dlq": {}, "ha": {"enabled": True, "cluster": {"bind_address": "h:1"}}}, [])
    assert ha["ha"] == {"enabled": False, "cluster": {"bind_address": "h:1"}}  # never joins the gateway's cluster


@pytest.mark.skipif("base_dir" in DlqSection.model_fields,
                    reason="until dlq.base_dir & co. move from DlqSection to FileDeadLetterQueue.Config")
def test_the_replay_profile_validates(tmp_path: Path) -> None:
    data = {"output": {"type": "stdout"}, "dlq": {"base_dir": str(tmp_path), "segment_size": "64MB"}}
    profile = validate_profile(replay_profile(data, []), registry_of(replay_module, stdout_module, file_module)).profile
    assert profile.source.type == "dlq_replay" and profile.source.base_dir == str(tmp_path)
    assert profile.dlq.base_dir == str(tmp_path) and profile.dlq.segment_size == 64 * 1024**2


def test_replay_refuses_an_id_of_neither_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = profile_file(tmp_path, {"base_dir": str(tmp_path / "dlq")})
    assert run_dlq_command(parse("replay", "-c", config, "--id", "p0-3")) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "'p0-3' is not a dead-letter entry id" in err and "p<partition>:<offset>" in err
