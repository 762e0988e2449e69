"""The spill to disk: FIFO order across segments, its bound, and recovery after a crash."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import structlog

from savegress_gw.spill import SpilledFrame, SpillFull, SpillQueue


def queue(directory: Path, max_bytes: int = 1 << 20, compress: bool = True) -> SpillQueue:
    spill = SpillQueue(directory, max_bytes, compress, structlog.get_logger())
    spill.open()
    return spill


def frame(i: int) -> SpilledFrame:
    """Incompressible payloads of 300..1,500 bytes, so sizes on disk are predictable."""
    return SpilledFrame(i % 4, i + 1, random.Random(i).randbytes(300 + (i % 5) * 300))


@pytest.mark.parametrize("compress", [True, False])
def test_frames_come_back_in_order_across_segments_which_are_deleted(tmp_path: Path, compress: bool) -> None:
    spill = queue(tmp_path, max_bytes=1 << 20, compress=compress)  # 256 KB segments
    for i in range(600):
        spill.append(frame(i))
    assert len(list(tmp_path.glob("*.seg"))) > 1
    assert (spill.records, spill.events) == (600, sum(i + 1 for i in range(600)))
    popped = [spill.pop() for _ in range(600)]
    assert popped == [frame(i) for i in range(600)]
    assert spill.pop() is None and not spill and spill.events == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1, "consumed segments are deleted"


def test_the_bound_is_enforced_without_writing_anything(tmp_path: Path) -> None:
    spill = queue(tmp_path, max_bytes=64 * 1024, compress=False)
    with pytest.raises(SpillFull):
        for i in range(10_000):
            spill.append(frame(i))
    before = (spill.records, spill.bytes)
    with pytest.raises(SpillFull):
        spill.append(frame(4))  # the largest size: it cannot fit what the loop left
    assert (spill.records, spill.bytes) == before and spill.bytes <= 64 * 1024


def test_a_torn_tail_is_truncated_and_the_rest_recovered(tmp_path: Path) -> None:
    spill = queue(tmp_path)
    for i in range(10):
        spill.append(frame(i))
    spill.pop()
    spill.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "ab") as handle:
        handle.write(b"\x40\x00\x00\x00torn")  # a crash in the middle of the next append
    recovered = queue(tmp_path)
    assert recovered.records == 10, "popped frames are delivered again: at least once"
    assert [recovered.pop() for _ in range(10)] == [frame(i) for i in range(10)]
    recovered.append(frame(99))
    assert recovered.pop() == frame(99)
