"""The ``dlq_replay`` source: reads parked events in order, removes exactly what was committed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from savegress_gw.deadletter import DeadLetterStore
from savegress_gw.envelope import encode
from savegress_gw.errors import ProfileError
from savegress_gw.testing import build, make_context
from savegress_gw_plugins.dlq.file import FileDeadLetterQueue
from savegress_gw_plugins.sources import dlq_replay as replay_module
from savegress_gw_plugins.sources.dlq_replay import DlqReplaySource


def envelope(i: int, table: str) -> dict[str, Any]:
    return {"id": f"evt-{i}", "source": "test", "schema": "public", "table": table, "operation": "INSERT",
            "timestamp": "2025-01-15T10:30:00.000000Z", "after": {"id": i}}


def park(directory: Path, first: int, count: int, table: str = "users") -> None:
    queue = FileDeadLetterQueue(FileDeadLetterQueue.Config(base_dir=str(directory)))
    queue.open(make_context())
    queue.put(encode([envelope(i, table) for i in range(first, first + count)], time.time_ns()), "HTTP 400: no",
              2, "gw/worker-0")
    queue.close()


def source(directory: Path, **config: Any) -> DlqReplaySource:
    built, _ = build("source", {"source": {"type": "dlq_replay", "base_dir": str(directory), **config}},
                     replay_module)
    assert isinstance(built, DlqReplaySource)
    return built


def parked(directory: Path) -> list[str]:
    return [e.event_id for e in DeadLetterStore(directory).entries()]


def test_reads_every_parked_event_in_order_as_envelopes(tmp_path: Path) -> None:
    park(tmp_path, 0, 4)
    park(tmp_path, 4, 3, table="orders")
    replay = source(tmp_path)
    assert replay.trusted and not replay.resumable
    first = replay.read(5, 0.1)
    assert first is not None and first.position == 4
    assert first.events == [envelope(i, "users") for i in range(4)] + [envelope(4, "orders")]
    assert not replay.exhausted
    second = replay.read(5, 0.1)
    assert second is not None and second.position == 6
    assert [e["id"] for e in second.events] == ["evt-5", "evt-6"]
    assert replay.exhausted
    assert replay.read(5, 0.1) is None
    assert parked(tmp_path) == [f"evt-{i}" for i in range(7)]  # nothing removed before a commit


def test_commit_removes_exactly_the_committed_entries(tmp_path: Path) -> None:
    park(tmp_path, 0, 6)
    replay = source(tmp_path)
    first, second = replay.read(2, 0.1), replay.read(2, 0.1)
    assert first is not None and second is not None
    replay.commit(first.position)
    assert parked(tmp_path) == ["evt-2", "evt-3", "evt-4", "evt-5"]
    replay.commit(second.position)
    assert parked(tmp_path) == ["evt-4", "evt-5"]
    replay.close()

    restarted = source(tmp_path)  # a new run sees only what was not committed
    batch = restarted.read(10, 0.1)
    assert batch is not None and [e["id"] for e in batch.events] == ["evt-4", "evt-5"]
    assert batch.position == 1 and restarted.exhausted
    restarted.commit(batch.position)
    assert parked(tmp_path) == []


def test_a_batch_with_drops_stays_in_the_queue(tmp_path: Path) -> None:
    park(tmp_path, 0, 4)
    replay = source(tmp_path)
    first, second = replay.read(2, 0.1), replay.read(2, 0.1)
    assert first is not None and second is not None
    replay.commit(first.position, dropped=1)
    replay.commit(second.position)
    assert parked(tmp_path) == ["evt-0", "evt-1"]


def test_events_parked_again_during_the_replay_are_not_read_twice(tmp_path: Path) -> None:
    park(tmp_path, 0, 2)
    replay = source(tmp_path)
    park(tmp_path, 100, 2)  # the sink failed again: parked as new entries
    batch = replay.read(10, 0.1)
    assert batch is not None and [e["id"] for e in batch.events] == ["evt-0", "evt-1"]
    assert replay.exhausted
    replay.commit(batch.position)
    assert parked(tmp_path) == ["evt-100", "evt-101"]


def test_ids_and_table_select_entries(tmp_path: Path) -> None:
    park(tmp_path, 0, 3)
    park(tmp_path, 3, 3, table="orders")
    ids = [e.id for e in DeadLetterStore(tmp_path).entries()]
    picked = source(tmp_path, ids=[ids[4], ids[1]]).read(10, 0.1)
    assert picked is not None and [e["id"] for e in picked.events] == ["evt-1", "evt-4"]
    for table in ("orders", "public.orders"):
        selected = source(tmp_path, table=table).read(10, 0.1)
        assert selected is not None and [e["id"] for e in selected.events] == ["evt-3", "evt-4", "evt-5"]


def test_a_malformed_id_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not a dead-letter entry id"):
        source(tmp_path, ids=["evt-1"])


def test_an_empty_queue_is_exhausted_at_once(tmp_path: Path) -> None:
    replay = source(tmp_path / "empty")
    assert replay.read(10, 0.1) is None and replay.exhausted


def test_an_unreadable_payload_is_left_in_the_queue(tmp_path: Path) -> None:
    queue = FileDeadLetterQueue(FileDeadLetterQueue.Config(base_dir=str(tmp_path)))
    queue.open(make_context())
    batch = encode([envelope(0, "users"), envelope(1, "users")], time.time_ns())
    batch.payloads[0] = b"not json"
    queue.put(batch, "boom", 1, "")
    queue.close()
    replay = source(tmp_path)
    read = replay.read(10, 0.1)
    assert read is not None and read.events == [orjson.loads(batch.payloads[1])] and read.position == 0
    replay.commit(read.position)
    assert parked(tmp_path) == ["evt-0"]
