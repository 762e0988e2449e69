"""``dlq.preserve_order`` in a whole gateway: a rejected event holds its key across runs until replayed.

The generator cycles ten keys (``after.id = (seq - 1) % 10 + 1``) into one table; the webhook
receiver rejects one event (400), so that event is parked and every later event of its key is
parked behind it, in this run and (loaded from the queue at start) in the next one, while the
other keys flow. ``dlq replay`` after the receiver recovers delivers the key's events in order,
empties the queue, and the key flows again in the run after that.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from savegress_gw.deadletter import DeadLetterStore
from tests.harness.flaky_http import FlakyReceiver, dlq_cli, dlq_entries, entry_seq, final_counters, kill_tree, \
    seq_of, webhook_output
from tests.harness.gateway import Gateway

pytestmark = pytest.mark.slow

KEYS = 10
POISON = 25
"""The rejected event; its key (``id`` 5) holds ``35, 45, ...``."""


def key_of(seq: int) -> int:
    return (seq - 1) % KEYS + 1


@pytest.fixture()
def gateways(tmp_path: Path) -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        kill_tree(gateway)


def profile(tmp_path: Path, receiver: FlakyReceiver, count: int) -> dict[str, Any]:
    return {
        "gateway": {"workers": 2, "graceful_timeout": "20s"},
        "source": {"type": "generator", "count": count, "rate": 0, "key_space": KEYS,
                   "generator_tables": ["public.users"], "row_size": 200},
        "output": webhook_output(receiver, batch_size=1, timeout="2s"),
        "batching": {"max_size": 10, "max_wait": "10ms"},
        "retry": {"initial_delay": "10ms", "max_delay": "50ms"},
        "dlq": {"type": "file", "base_dir": str(tmp_path / "dlq"), "max_retries": 2, "retry_delay": "10ms",
                "preserve_order": True},
    }


def test_a_parked_event_holds_its_key_across_runs_until_replayed(tmp_path: Path, gateways: list[Gateway]) -> None:
    held_key = key_of(POISON)
    with FlakyReceiver(reject=lambda event: seq_of(event) == POISON) as receiver:
        def run(count: int) -> Gateway:
            gateways.append(Gateway(tmp_path, profile(tmp_path, receiver, count)).start())
            assert gateways[-1].wait(120) == 0, gateways[-1].stderr()[-5000:]
            return gateways[-1]

        first = run(200)
        entries = dlq_entries(tmp_path / "dlq")
        behind = [s for s in range(POISON + KEYS, 201, KEYS)]
        assert [entry_seq(e) for e in entries] == [POISON, *behind]
        assert "400 Bad Request" in entries[0].reason
        assert {e.reason for e in entries[1:]} == {f"held behind parked event gen-{POISON} (dlq.preserve_order)"}
        assert final_counters(first)["events_dead_lettered"] == 1 + len(behind)
        assert receiver.distinct() == {s for s in range(1, 201) if s not in (POISON, *behind)}

        run(300)  # a new run holds the key from the start: its entries are still in the queue
        behind_later = [s for s in range(205, 301, KEYS)]
        assert [entry_seq(e) for e in dlq_entries(tmp_path / "dlq")] == [POISON, *behind, *behind_later]
        assert {key_of(s) for s in receiver.distinct() if s > 200} == set(range(1, KEYS + 1)) - {held_key}

        receiver.reject = None
        replay = dlq_cli(gateways[-1], "replay")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert DeadLetterStore(tmp_path / "dlq").count() == 0

        run(400)  # released: nothing of the key is parked any more
        assert dlq_entries(tmp_path / "dlq") == []
        arrivals = [s for s in receiver.accepted if key_of(s) == held_key]
    assert sorted(set(arrivals)) == list(range(held_key, 401, KEYS))
    firsts = list(dict.fromkeys(arrivals))  # each event's first arrival, in arrival order
    assert firsts == sorted(firsts), f"key {held_key} arrived out of order: {firsts}"
