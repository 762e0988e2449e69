"""The event envelope: normalize, message keys, timestamps, encoding into a Batch."""

from __future__ import annotations

import re
import time

import orjson
import pytest

from savegress_gw.envelope import (
    ENVELOPE_FIELDS,
    EnvelopeError,
    encode,
    format_timestamp,
    message_key,
    new_event_id,
    normalize,
    now_iso,
    timestamp_ms,
)

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_normalize_fills_id_timestamp_and_source() -> None:
    before = time.time()
    event = normalize({"table": "users", "operation": "INSERT", "after": {"id": 1}}, "http")
    after = time.time()
    assert event["id"].startswith("evt-")
    assert ISO.match(event["timestamp"]), event["timestamp"]
    assert before - 0.001 <= timestamp_ms(event["timestamp"]) / 1000 <= after + 0.001
    assert event["source"] == "http"
    assert event["after"] == {"id": 1}


def test_normalize_keeps_what_the_client_gave() -> None:
    given = {"id": "evt-001", "timestamp": "2024-01-15T10:30:00.123Z", "source": "orders-api",
             "table": "orders", "schema": "shop", "operation": "update", "transaction_id": "tx-9",
             "position": {"seq": 3}, "before": {"id": 1}, "after": {"id": 1, "v": 2}, "metadata": {"k": "v"}}
    event = normalize(given, "http")
    assert event == {**given, "operation": "UPDATE"}
    assert given["operation"] == "update"  # the input is not modified


def test_generated_ids_are_unique() -> None:
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000
    first = normalize({"table": "t", "operation": "INSERT"}, "s")["id"]
    second = normalize({"table": "t", "operation": "INSERT"}, "s")["id"]
    assert first != second


@pytest.mark.parametrize("operation", ["insert", "Update", "DELETE", "truncate", "snapshot", "ddl"])
def test_operations_are_upper_cased(operation: str) -> None:
    assert normalize({"table": "t", "operation": operation}, "s")["operation"] == operation.upper()


def test_type_is_an_alias_of_operation() -> None:
    event = normalize({"table": "t", "type": "delete", "before": {"id": 3}}, "s")
    assert event["operation"] == "DELETE"
    assert "type" not in event


def test_id_is_made_a_string() -> None:
    assert normalize({"table": "t", "operation": "INSERT", "id": 5}, "s")["id"] == "5"


@pytest.mark.parametrize("operation", ["BEGIN", "COMMIT", "HEARTBEAT"])
def test_transaction_markers_need_no_table(operation: str) -> None:
    assert normalize({"operation": operation}, "s")["operation"] == operation


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([1, 2], "an event must be a JSON object, got array"),
        ("INSERT", "an event must be a JSON object, got string"),
        ({"table": "t", "operation": "INSERT", "colour": 1, "size": 2},
         "unknown field(s) colour, size; an event has id, source, schema"),
        ({"table": "t", "operation": "UPSERT"}, "operation 'UPSERT' is not one of BEGIN, COMMIT"),
        ({"table": "t"}, "operation None is not one of"),
        ({"table": "t", "operation": 7}, "operation 7 is not one of"),
        ({"operation": "INSERT"}, "table is required (a non-empty string)"),
        ({"table": "", "operation": "INSERT"}, "table is required"),
        ({"table": 5, "operation": "INSERT"}, "table is required"),
        ({"table": "t", "operation": "INSERT", "after": [1]}, "after must be an object or null, got array"),
        ({"table": "t", "operation": "INSERT", "before": "x"}, "before must be an object or null, got string"),
        ({"table": "t", "operation": "INSERT", "metadata": 3}, "metadata must be an object, got number"),
        ({"table": "t", "operation": "INSERT", "timestamp": "yesterday"}, "timestamp 'yesterday' is not ISO 8601"),
    ],
)
def test_errors_name_the_field(event: object, message: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        normalize(event, "s")
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("timestamp", [1700000000, 1.5, ["2024-01-01"], {"t": 1}, True])
def test_non_string_timestamp_is_an_envelope_error(timestamp: object) -> None:
    # The source process catches EnvelopeError only: anything else would crash it on one bad event.
    with pytest.raises(EnvelopeError, match="timestamp"):
        normalize({"table": "t", "operation": "INSERT", "timestamp": timestamp}, "s")


def test_timestamps() -> None:
    assert timestamp_ms("2024-01-15T10:30:00.123Z") == 1705314600123
    assert timestamp_ms("2024-01-15T10:30:00.123") == 1705314600123  # naive means UTC
    assert timestamp_ms("2024-01-15T12:30:00.123+02:00") == 1705314600123
    assert format_timestamp(1705314600123456789) == "2024-01-15T10:30:00.123456Z"
    assert ISO.match(now_iso())


@pytest.mark.parametrize(
    "value",
    ["2024-01-15T10:30:00.123456Z", "2024-02-29T23:59:59.999999Z", "1999-12-31T00:00:00.000001Z",
     "2024-01-15T10:30:00.5Z", "2024-01-15T10:30:00Z", "2024-01-15T12:30:00.123456+02:00"],
)
def test_timestamp_ms_agrees_with_datetime(value: str) -> None:
    from datetime import datetime

    expected = int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    assert timestamp_ms(value) == expected


@pytest.mark.parametrize("value", ["2024-01-15T10:30:99.123456Z", "2024-01-15T10:30X00.123456Z"])
def test_invalid_timestamps_in_the_envelope_form_are_refused(value: str) -> None:
    with pytest.raises(EnvelopeError, match="is not ISO 8601"):
        normalize({"table": "t", "operation": "INSERT", "timestamp": value}, "s")


def test_message_key_uses_the_primary_key_columns() -> None:
    assert message_key({"id": "e1", "table": "users", "after": {"id": 1, "name": "a"}}) == "users:1"
    composite = {"id": "e2", "table": "order_items", "after": {"order_id": 7, "line": 2, "sku": "x"},
                 "metadata": {"primary_key": ["order_id", "line"]}}
    assert message_key(composite) == "order_items:7:2"


def test_message_key_of_a_delete_comes_from_before() -> None:
    assert message_key({"id": "e3", "table": "users", "before": {"id": 9}, "after": None}) == "users:9"


@pytest.mark.parametrize(
    "event",
    [
        {"id": "evt-7", "table": "logs", "after": {"message": "no id column"}},
        {"id": "evt-7", "table": "logs", "after": {"a": 1}, "metadata": {"primary_key": ["a", "b"]}},
        {"id": "evt-7", "table": "logs", "after": {"id": None}},
        {"id": "evt-7", "table": "logs"},
    ],
)
def test_message_key_falls_back_to_the_event_id(event: dict) -> None:
    assert message_key(event) == "logs:evt-7"


def test_encode_builds_columns() -> None:
    events = [
        normalize({"table": "users", "schema": "public", "operation": "insert", "after": {"id": 1},
                   "timestamp": "2024-01-15T10:30:00.123Z", "id": "a"}, "http"),
        normalize({"operation": "COMMIT", "id": "b", "timestamp": "2024-01-15T10:30:00.124Z"}, "http"),
    ]
    batch = encode(events, ingest_ns=123)
    assert len(batch) == 2
    assert [orjson.loads(p) for p in batch.payloads] == events
    assert batch.keys == ["users:1", ":b"]
    assert batch.ids == ["a", "b"]
    assert batch.operations == ["INSERT", "COMMIT"]
    assert batch.schemas == ["public", ""]
    assert batch.tables == ["users", ""]
    assert batch.timestamps_ms == [1705314600123, 1705314600124]
    assert batch.ingest_ns == [123, 123]


def test_batch_slicing_helpers() -> None:
    events = [normalize({"table": "t", "operation": "INSERT", "id": str(i), "after": {"id": i}}, "s")
              for i in range(5)]
    batch = encode(events, 1)
    assert batch.slice(1, 3).ids == ["1", "2"]
    assert batch.take([4, 0]).keys == ["t:4", "t:0"]
    copy = batch.slice(0, 2)
    copy.extend(batch.slice(4, 5))
    assert copy.ids == ["0", "1", "4"] and batch.ids == ["0", "1", "2", "3", "4"]
    assert type(batch).from_columns(batch.to_columns()) == batch
    assert set(ENVELOPE_FIELDS) >= {"id", "table", "operation", "timestamp"}
