"""SIGHUP: a running gateway takes a changed profile without losing or duplicating an event, and
goes on with the current one when the new one is invalid."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.gateway import Gateway, wait_for
from tests.harness.verify import file_sink_events, verify_sequences

pytestmark = pytest.mark.slow


def edit_profile(gateway: Gateway, change: dict[str, Any]) -> None:
    profile = yaml.safe_load(gateway.profile_path.read_text())
    for section, values in change.items():
        profile.setdefault(section, {}).update(values)
    gateway.profile_path.write_text(yaml.safe_dump(profile))


def written(tmp_path: Path) -> list[int]:
    return [event["after"]["seq"] for event in file_sink_events(tmp_path / "out" / "events.jsonl")]


def test_sighup_restarts_with_a_changed_profile_and_goes_on_with_an_unchanged_or_invalid_one(tmp_path: Path) -> None:
    count = 30_000
    (tmp_path / "out").mkdir()
    gateway = Gateway(tmp_path, {
        "gateway": {"workers": 1, "graceful_timeout": "20s"},
        "source": {"type": "generator", "count": count, "rate": 3_000, "row_size": 200},
        "output": {"type": "file", "path": str(tmp_path / "out" / "events.jsonl")},
        "batching": {"max_size": 500, "max_wait": "20ms"},
        "checkpoint": {"interval": "200ms"},
    }).start()
    try:
        gateway.wait_ready()
        wait_for(lambda: len(written(tmp_path)) > 3_000, 30, "the first events")
        children = set(gateway.workers())

        gateway.signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: the profile did not change" in gateway.stderr(), 15, "the unchanged profile")
        edit_profile(gateway, {"batching": {"max_size": -5}})
        gateway.signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: the profile is invalid" in gateway.stderr(), 15, "the invalid profile to be reported")
        assert "batching.max_size" in gateway.stderr()
        assert set(gateway.workers()) == children, "an invalid profile restarted the pipeline"

        edit_profile(gateway, {"batching": {"max_size": 500}, "gateway": {"workers": 2}})
        gateway.signal(signal.SIGHUP)
        wait_for(lambda: "restarting with the new profile" in gateway.stderr(), 30, "the restart")
        gateway.wait_ready()
        wait_for(lambda: len(gateway.workers()) == 3, 30, "the source process and two workers")
        assert gateway.process.poll() is None, "the supervisor process itself was replaced"
        assert children.isdisjoint(gateway.workers()), "a child of the old profile still runs"
        assert gateway.wait(60) == 0, gateway.stderr()[-3000:]
    finally:
        gateway.stop()
    verdict = verify_sequences(written(tmp_path), count)
    print(f"reloaded mid-stream: {verdict}")
    assert verdict.missing == [] and verdict.duplicates == 0, str(verdict)
    assert gateway.stderr().count('"event": "gateway starting"') == 2
