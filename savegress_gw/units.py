"""Parsing of the profile's value formats: durations (``10ms``, ``5m``, ``7d``) and sizes (``64KB``).

Both parsers accept plain numbers too: a bare number is seconds for a duration and bytes for a size.
They raise :class:`ValueError` with a message that names the accepted forms, which pydantic turns
into a validation error at the offending key path.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2,
    "gb": 1024**3, "gib": 1024**3, "tb": 1024**4, "tib": 1024**4,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h|d)")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: Any) -> float:
    """Return seconds for ``100ms``, ``1s``, ``5m``, ``1h``, ``7d``, ``1h30m`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 100ms, 1s, 5m, 1h or 7d")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative number of seconds")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        parts = _DURATION_PART.findall(text)
        if parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""):
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            return parse_duration(number)
    raise ValueError(f"invalid duration {value!r}: expected a number with a unit such as 100ms, 1s, 5m, 1h or 7d")


def parse_size(value: Any) -> int:
    """Return bytes for ``64KB``, ``100MB``, ``5GB`` (powers of 1024) or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KB, 100MB or 5GB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS | {"": 1}:
            unit = _SIZE_UNITS.get(match.group(2).lower(), 1)
            return int(float(match.group(1)) * unit)
    raise ValueError(f"invalid size {value!r}: expected a number of bytes or a size such as 64KB, 100MB or 5GB")


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` in the profile's duration syntax."""
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        count = seconds / factor
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": ["string", "number"], "pattern": r"^(\d+(\.\d+)?(us|ms|s|m|h|d))+$",
                    "description": "duration: 100ms, 1s, 5m, 1h, 7d (a bare number is seconds)"}),
]
"""Seconds, written in profiles as ``100ms``, ``1s``, ``5m``, ``1h`` or ``7d``."""

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": ["string", "integer"],
                    "description": "size: bytes, or 64KB, 100MB, 5GB (powers of 1024)"}),
]
"""Bytes, written in profiles as ``64KB``, ``100MB`` or ``5GB``."""
