"""The ``generator`` source: sequence numbers, keys, sizes, count, resume, pacing, trusted envelopes."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest

from savegress_gw.components import SourceBatch
from savegress_gw.envelope import encode, message_key, normalize
from savegress_gw.errors import ProfileError
from savegress_gw.testing import build
from savegress_gw_plugins.sources import generator as generator_module
from savegress_gw_plugins.sources.generator import GeneratorSource


def source(**options: Any) -> GeneratorSource:
    built, _ = build("source", {"source": {"type": "generator", **options}}, generator_module)
    assert isinstance(built, GeneratorSource)
    return built


def decoded(batch: SourceBatch) -> list[dict[str, Any]]:
    """The events of an encoded batch, checking that its columns agree with its payloads."""
    assert batch.encoded is not None and batch.events == []
    events = [orjson.loads(payload) for payload in batch.encoded.payloads]
    assert encode(events, 0).to_columns()[:-1] == batch.encoded.to_columns()[:-1]  # all but ingest time
    return events


def read_all(target: GeneratorSource, n: int, chunk: int = 1000) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < n:
        batch = target.read(min(chunk, n - len(events)), 1.0)
        assert batch is not None
        events += decoded(batch)
        assert batch.position == events[-1]["after"]["seq"]
    return events


def test_sequence_numbers_start_at_1_and_are_the_position() -> None:
    target = source()
    first = target.read(3, 1.0)
    second = target.read(2, 1.0)
    assert first is not None and second is not None
    assert (first.position, second.position) == (3, 5)
    events = decoded(first) + decoded(second)
    assert [e["after"]["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert [e["position"] for e in events] == [{"sequence": s} for s in range(1, 6)]
    assert [e["id"] for e in events] == [f"gen-{s}" for s in range(1, 6)]


def test_every_event_is_already_normalized() -> None:
    assert GeneratorSource.trusted is True
    for event in read_all(source(), 300):
        assert normalize(event, "other") == event
        assert event["source"] == "generator"


def test_tables_and_operations_cycle_with_their_row_images() -> None:
    events = read_all(source(generator_tables=["public.users", "shop.orders", "shop.items"]), 6)
    tables = [(e["schema"], e["table"]) for e in events[:3]]
    assert tables == [("shop", "orders"), ("shop", "items"), ("public", "users")]
    by_operation = {e["operation"]: e for e in events}
    assert by_operation["INSERT"]["before"] is None
    for operation in ("UPDATE", "DELETE"):
        event = by_operation[operation]
        assert event["before"] == {"id": event["after"]["id"]}


@pytest.mark.parametrize("key_space", [7, generator_module._CACHED_KEYS, generator_module._CACHED_KEYS + 1])
def test_reads_across_the_end_of_the_key_space_wrap_to_key_1(key_space: int) -> None:
    """Keys of small key spaces are cut from a precomputed cycle, of large ones computed per read."""
    target = source(key_space=key_space)
    target.seek(key_space - 5)
    events = read_all(target, 2 * key_space + 10 if key_space < 100 else 20, chunk=3000)
    seqs = range(key_space - 4, key_space - 4 + len(events))
    assert [e["after"]["id"] for e in events] == [(s - 1) % key_space + 1 for s in seqs]
    assert [e["before"]["id"] for e in events if e["before"]] == \
        [(s - 1) % key_space + 1 for s, e in zip(seqs, events) if e["before"]]


def test_primary_keys_cycle_within_the_key_space() -> None:
    events = read_all(source(key_space=7), 30)
    assert [e["after"]["id"] for e in events] == [(s - 1) % 7 + 1 for s in range(1, 31)]
    assert all(list(e["metadata"]["primary_key"]) == ["id"] for e in events)
    assert message_key(events[8]) == f"{events[8]['table']}:2"
    assert orjson.loads(orjson.dumps(events[0]))["metadata"] == {"primary_key": ["id"]}


@pytest.mark.parametrize("row_size, expected", [(300, 300), (1000, 1000), ("4KB", 4096)])
def test_envelope_size_is_row_size_within_20_percent(row_size: int | str, expected: int) -> None:
    target = source(row_size=row_size)
    sizes = [len(orjson.dumps(e)) for e in read_all(target, 200)]
    target.seek(5_000_000)
    sizes += [len(orjson.dumps(e)) for e in read_all(target, 200)]
    assert all(0.8 * expected <= size <= 1.2 * expected for size in sizes), (min(sizes), max(sizes))


def test_padding_varies_between_events() -> None:
    payloads = {e["after"]["payload"] for e in read_all(source(row_size=600), 500)}
    assert len(payloads) == 500


def test_weighted_operations_follow_their_weights_and_the_seed() -> None:
    events = read_all(source(operations={"INSERT": 3, "UPDATE": 1}, seed=7), 400)
    assert Counter(e["operation"] for e in events) == {"INSERT": 300, "UPDATE": 100}
    again = read_all(source(operations={"INSERT": 3, "UPDATE": 1}, seed=7), 400)
    assert [e["operation"] for e in events] == [e["operation"] for e in again]
    assert [e["after"]["payload"] for e in events] == [e["after"]["payload"] for e in again]


def test_operation_list_is_a_simple_cycle() -> None:
    events = read_all(source(operations=["INSERT", "INSERT", "DELETE"]), 6)
    assert [e["operation"] for e in events] == ["INSERT", "DELETE", "INSERT", "INSERT", "DELETE", "INSERT"]


def test_count_stops_the_stream_and_sets_exhausted() -> None:
    target = source(count=10)
    sizes = []
    while not target.exhausted:
        batch = target.read(4, 1.0)
        assert batch is not None
        sizes.append(len(batch))
    assert sizes == [4, 4, 2]
    assert target.read(4, 1.0) is None


def test_seek_continues_after_the_position_with_the_same_events() -> None:
    straight = read_all(source(count=50), 50)
    resumed = source(count=50)
    resumed.seek(20)
    rest = read_all(resumed, 30)
    assert resumed.exhausted
    strip = [{**e, "timestamp": None} for e in straight[20:]]
    assert [{**e, "timestamp": None} for e in rest] == strip


def test_commit_records_the_position() -> None:
    target = source()
    batch = target.read(5, 1.0)
    assert batch is not None
    target.commit(batch.position)
    assert target.committed == 5


def test_seek_refuses_what_is_not_a_sequence_number() -> None:
    with pytest.raises(ValueError, match="sequence number"):
        source().seek({"sequence": 3})


def test_rate_paces_reads_and_read_waits_at_most_timeout() -> None:
    target = source(rate=200)
    started = time.monotonic()
    events = 0
    while events < 60:
        batch = target.read(1000, 0.05)
        events += len(batch) if batch else 0
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3.0, elapsed  # 60 events at 200/s: about 0.3 s

    slow = source(rate=0.5)
    assert slow.read(10, 0.05) is not None  # the first event is due at once
    started = time.monotonic()
    assert slow.read(10, 0.05) is None
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("options, message", [
    ({"generator_tables": ["users"]}, "generator_tables.0"),
    ({"operations": {"INSERT": 0}}, "not all 0"),
    ({"operations": ["UPSERT"]}, "operations"),
    ({"tables": ["public.users"], "generator_tables": []}, "generator_tables"),
])
def test_invalid_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        source(**options)
