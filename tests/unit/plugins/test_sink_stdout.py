"""The ``stdout`` sink: json lines, pretty json, text lines, one write per batch, broken pipes."""

from __future__ import annotations

import io
import sys
from typing import Any

import orjson
import pytest

from savegress_gw import Outcome, Status
from savegress_gw.envelope import encode
from savegress_gw.errors import ProfileError
from savegress_gw.testing import build
from savegress_gw_plugins.sinks import stdout as stdout_module
from savegress_gw_plugins.sinks.stdout import StdoutSink

EVENTS: list[dict[str, Any]] = [
    {"id": "evt-1", "source": "postgres", "schema": "public", "table": "users", "operation": "INSERT",
     "timestamp": "2025-01-15T10:30:00.123456Z", "after": {"id": 1, "name": "ada"},
     "metadata": {"primary_key": ["id"]}},
    {"id": "evt-2", "source": "postgres", "schema": "shop", "table": "orders", "operation": "DELETE",
     "timestamp": "2025-01-15T10:30:01.5Z", "before": {"id": 7}, "after": None},
]
BATCH = encode(EVENTS, 0)


def sink(**output: object) -> StdoutSink:
    built, _ = build("sink", {"output": {"type": "stdout", **output}}, stdout_module)
    assert isinstance(built, StdoutSink)
    return built


def send(target: StdoutSink) -> list[Outcome]:
    outcomes: list[Outcome] = []
    target.send(BATCH, outcomes.append)
    return outcomes


def test_json_is_one_payload_per_line(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    outcomes = send(sink())
    assert capfdbinary.readouterr().out == BATCH.payloads[0] + b"\n" + BATCH.payloads[1] + b"\n"
    assert outcomes == [Outcome(Status.DELIVERED)]


def test_pretty_json_indents_each_event(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    send(sink(format="json", pretty=True))
    out = capfdbinary.readouterr().out
    assert out.startswith(b'{\n  "id": "evt-1",\n  "source": "postgres",\n')
    assert out == b"".join(orjson.dumps(orjson.loads(p), option=orjson.OPT_INDENT_2) + b"\n" for p in BATCH.payloads)


def test_text_is_a_human_line_per_event(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    send(sink(format="text"))
    assert capfdbinary.readouterr().out.decode().splitlines() == [
        "2025-01-15T10:30:00.123Z INSERT public.users key=users:1 id=evt-1",
        "2025-01-15T10:30:01.500Z DELETE shop.orders key=orders:7 id=evt-2",
    ]


class Recording(io.BytesIO):
    def __init__(self, error: OSError | None = None) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0
        self.error = error

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        if self.error:
            raise self.error
        return super().write(data)

    def flush(self) -> None:
        self.flushes += 1


def swap_stdout(monkeypatch: pytest.MonkeyPatch, buffer: Recording) -> None:
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buffer))


def test_one_write_and_one_flush_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = Recording()
    swap_stdout(monkeypatch, buffer)
    target = sink()
    send(target)
    send(target)
    assert (buffer.writes, buffer.flushes) == (2, 2)
    assert buffer.getvalue().count(b"\n") == 4


def test_broken_pipe_is_errored_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    swap_stdout(monkeypatch, Recording(BrokenPipeError(32, "Broken pipe")))
    [outcome] = send(sink())
    assert outcome.status is Status.ERRORED
    assert "Broken pipe" in outcome.reason


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ProfileError, match="output.format"):
        sink(format="xml")
