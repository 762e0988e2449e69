"""Durations and sizes as profiles write them: ``10ms``, ``1h30m``, ``64KB``, bare numbers."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from savegress_gw.units import Duration, Size, format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10ms", 0.01),
        ("1s", 1.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 7 * 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2m30s", 150.0),
        ("1.5s", 1.5),
        ("250us", 250e-6),
        ("100µs", 100e-6),
        (" 30s ", 30.0),
        ("1H", 3600.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("value", "seconds"), [(5, 5.0), (0, 0.0), (2.5, 2.5), ("5", 5.0), ("0.25", 0.25)])
def test_bare_numbers_are_seconds(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == seconds


@pytest.mark.parametrize("bad", ["abc", "", "10x", "1m30", "1h30mfoo", "-1s", "ms", "1.5.5s", ".5s", None, [1]])
def test_bad_durations_name_the_value_and_the_accepted_forms(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    message = str(info.value)
    assert f"invalid duration {bad!r}" in message
    assert "100ms, 1s, 5m, 1h or 7d" in message


def test_negative_and_boolean_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        parse_duration(-1)
    with pytest.raises(ValueError, match="expected a duration such as 100ms"):
        parse_duration(True)


@pytest.mark.parametrize("bad", ["nan", "NaN", float("nan")])
def test_nan_is_not_a_duration(bad: object) -> None:
    # A NaN max_wait validates today and makes `now - first >= max_wait` never true: the batch
    # would never be flushed by time.
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64KB", 64 * 1024),
        ("100MB", 100 * 1024**2),
        ("5GB", 5 * 1024**3),
        ("1TB", 1024**4),
        ("1gib", 1024**3),
        ("2KiB", 2048),
        ("10 kb", 10 * 1024),
        ("1.5KB", 1536),
        ("512B", 512),
        ("1024", 1024),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    result = parse_size(text)
    assert isinstance(result, int)
    assert result == size


@pytest.mark.parametrize("bad", ["5XB", "abc", "", "-5", "KB", 1.5, None])
def test_bad_sizes_name_the_value_and_the_accepted_forms(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(bad)
    message = str(info.value)
    assert f"invalid size {bad!r}" in message
    assert "64KB, 100MB or 5GB" in message


def test_negative_and_boolean_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_size(-1)
    with pytest.raises(ValueError, match="expected a size such as 64KB"):
        parse_size(False)


@pytest.mark.parametrize(
    ("seconds", "text"), [(5400.0, "90m"), (0.01, "10ms"), (90.0, "90s"), (7 * 86400.0, "7d"), (1e-4, "100us")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [0.0123456, 3600.5, 123.456, 1e-7, 2.5, 129600.0])
def test_format_duration_of_uneven_values_parses_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("seconds", [1.2345678, 1.0000001, 10.0000005])
def test_format_duration_never_produces_an_unparseable_value(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-9)


class _Model(BaseModel):
    wait: Duration = 1.0
    size: Size = 0


def test_annotated_types_in_a_model_report_the_field() -> None:
    model = _Model(wait="1h30m", size="64KB")
    assert (model.wait, model.size) == (5400.0, 65536)
    assert model.model_dump(mode="json") == {"wait": "90m", "size": 65536}
    with pytest.raises(ValidationError) as info:
        _Model(wait="soon", size="lots")
    errors = {e["loc"][0]: e["msg"] for e in info.value.errors()}
    assert "invalid duration 'soon'" in errors["wait"]
    assert "invalid size 'lots'" in errors["size"]
