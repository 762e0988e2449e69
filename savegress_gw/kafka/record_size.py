"""The size librdkafka counts a record at against ``message.max.bytes``.

librdkafka refuses a record in ``produce()`` when ``36 + len(key) + len(value) + headers`` exceeds
``message.max.bytes``, each header counting ``len(name) + len(value)`` plus a zigzag varint for
each of the two lengths (measured against confluent-kafka 2.x: the bound moves by exactly these
amounts). Code that raises ``message.max.bytes`` above the output's limit (the exactly-once
producer, which also writes larger dead-letter records) checks output records with this instead.
"""

from __future__ import annotations

from collections.abc import Sequence

RECORD_OVERHEAD = 36
"""Bytes librdkafka adds to every record's key and value (length, attributes, deltas, counts)."""


def _varint_size(length: int) -> int:
    """Bytes of the zigzag varint of a non-negative ``length``."""
    zigzag, size = length << 1, 1
    while zigzag >= 0x80:
        zigzag >>= 7
        size += 1
    return size


def _utf8_len(text: str | bytes | None) -> int:
    if text is None:
        return 0
    return len(text) if isinstance(text, bytes) else len(text.encode())


def record_size(key: str | bytes | None, value: bytes | None, headers: Sequence[tuple[str, str | bytes]] = ()) -> int:
    """The size of one record as librdkafka compares it with ``message.max.bytes``."""
    size = RECORD_OVERHEAD + _utf8_len(key) + _utf8_len(value)
    for name, header in headers:
        name_len, value_len = _utf8_len(name), _utf8_len(header)
        size += _varint_size(name_len) + name_len + _varint_size(value_len) + value_len
    return size
