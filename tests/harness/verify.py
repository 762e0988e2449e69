"""Count missing and duplicated sequence numbers in what a sink wrote."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from savegress_gw.compression import FILE_SUFFIX, decompress


@dataclass
class Verdict:
    expected: int
    seen: int
    missing: list[int]
    duplicates: int

    def __str__(self) -> str:
        return (f"expected {self.expected}, seen {self.seen} distinct, missing {len(self.missing)} "
                f"(first {self.missing[:10]}), duplicates {self.duplicates}")


def verify_sequences(sequences: Iterable[int], expected: int) -> Verdict:
    counts = Counter(sequences)
    missing = [n for n in range(1, expected + 1) if n not in counts]
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    return Verdict(expected, len(counts), missing, duplicates)


def file_sink_events(path: Path) -> list[dict]:
    """Every event in a file sink's active file and rotated (possibly compressed) segments.

    A last line without its newline is left out, as the file sink itself drops it when it reopens
    the file: it is an append still in progress (a running gateway) or torn by a kill."""
    encodings = {suffix: encoding for encoding, suffix in FILE_SUFFIX.items() if suffix}
    segments: list[tuple[int, Path]] = []
    for candidate in path.parent.glob(path.name + ".*"):
        number = candidate.name[len(path.name) + 1:].split(".", 1)[0]
        if number.isdigit() and not candidate.name.endswith("tmp"):
            segments.append((int(number), candidate))
    ordered = [p for _, p in sorted(segments)] + ([path] if path.exists() else [])  # oldest first
    events = []
    for candidate in ordered:
        data = candidate.read_bytes()
        encoding = encodings.get(candidate.suffix)
        if encoding:
            data = decompress(data, encoding)
        complete = data[:data.rfind(b"\n") + 1]
        events.extend(orjson.loads(line) for line in complete.splitlines() if line.strip())
    return events
