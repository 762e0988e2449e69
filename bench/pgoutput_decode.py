"""pgoutput decode throughput on one core: messages/s of ``pgoutput.decode`` and rows/s with
``RowDecoder`` conversion (and ``orjson.dumps``) added.

The messages are Insert payloads laid out exactly as the walsender sends them, for the 8-column
row of postgres-cdc-notes §11 (bigint, text, numeric, timestamptz, jsonb, float8, bool, uuid;
about 185 bytes), so no server is needed.

    python bench/pgoutput_decode.py [--messages 500000]
"""

from __future__ import annotations

import argparse
import struct
import time

import orjson

from savegress_gw.postgres.pgoutput import Column, Relation, decode
from savegress_gw.postgres.types import RowDecoder

COLUMNS = [
    ("id", 20, "123456"),
    ("name", 25, "some text value for the row"),
    ("amount", 1700, "12345.67"),
    ("created_at", 1184, "2024-03-10 07:30:00.123456+00"),
    ("doc", 3802, '{"a": 1, "b": [1, 2, 3], "c": {"d": "e"}}'),
    ("score", 701, "0.123456789"),
    ("active", 16, "t"),
    ("uid", 2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
]


def insert_payload(relid: int) -> bytes:
    out = b"I" + struct.pack(">I", relid) + b"N" + struct.pack(">H", len(COLUMNS))
    for _, _, text in COLUMNS:
        raw = text.encode()
        out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


def rate(label: str, count: int, work) -> None:
    started = time.process_time()
    work()
    elapsed = time.process_time() - started
    print(
        f"{label:>28}: {count / elapsed:>10,.0f} /s  "
        f"({elapsed / count * 1e6:.2f} µs each, CPU time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500_000)
    args = parser.parse_args()
    payload = insert_payload(16384)
    relation = Relation(
        16384, "public", "bench", "d",
        tuple(Column(name, oid, -1, name == "id") for name, oid, _ in COLUMNS),
    )
    decoder = RowDecoder(relation)
    payloads = [payload] * args.messages
    print(f"{len(payload)}-byte Insert messages, {len(COLUMNS)} columns")

    def decode_only() -> None:
        for item in payloads:
            decode(item)

    def decode_convert() -> None:
        for item in payloads:
            decoder.decode(decode(item).new)

    def decode_convert_json() -> None:
        for item in payloads:
            orjson.dumps(decoder.decode(decode(item).new)[0])

    rate("decode", args.messages, decode_only)
    rate("decode + RowDecoder", args.messages, decode_convert)
    rate("decode + RowDecoder + orjson", args.messages, decode_convert_json)


if __name__ == "__main__":
    main()
