"""How the source process cuts a batch into ring frames, plain and sequenced (exactly-once)."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import structlog

from savegress_gw.components import Batch
from savegress_gw.exactly_once.frames import Marker, decode_sequenced
from savegress_gw.pipeline import decode_frame
from savegress_gw.source_process import Router


class Counts:
    def __init__(self) -> None:
        self.dropped = 0

    def inc(self, name: str, amount: float = 1.0, label: str = "") -> None:
        assert (name, label) == ("events_dropped_total", "rejected")
        self.dropped += int(amount)


def batch(sizes: list[int]) -> Batch:
    n = len(sizes)
    return Batch([b"x" * size for size in sizes], [f"t:{i}" for i in range(n)], [f"e{i}" for i in range(n)],
                 ["INSERT"] * n, ["public"] * n, ["t"] * n, [0] * n, [0] * n)


def router() -> Any:
    """The parts of a Router that frame cutting uses."""
    fake = SimpleNamespace(metrics=Counts(), log=structlog.get_logger())
    fake._fitting = lambda *args: Router._fitting(fake, *args)
    return fake


def test_plain_frames_halve_until_they_fit_and_an_event_too_large_alone_is_dropped_and_counted() -> None:
    fake = router()
    frames = Router._frames(fake, batch([100] * 7 + [5000] + [100] * 8), 1000)
    assert all(len(payload) <= 1000 for payload, _ in frames)
    ids = [i for payload, _ in frames for i in decode_frame(payload).ids]
    assert ids == [f"e{i}" for i in range(16) if i != 7]
    assert sum(events for _, events in frames) == 15 and fake.metrics.dropped == 1


def test_sequenced_frames_carry_the_marker_on_the_last_frame_only() -> None:
    fake = router()
    frames = Router._sequenced_frames(fake, batch([100] * 16), list(range(1, 17)), None, Marker({"": 16}, 16), 1000)
    decoded = [decode_sequenced(payload) for payload, _, _ in frames]
    assert len(frames) > 1 and [d.marker for d in decoded] == [None] * (len(frames) - 1) + [Marker({"": 16}, 16)]
    assert [o for d in decoded for o in d.ordinals] == list(range(1, 17))
    assert [holds - events for _, events, holds in frames] == [0] * (len(frames) - 1) + [1]


def test_the_marker_travels_alone_when_the_batch_is_empty_or_its_last_event_is_dropped() -> None:
    fake = router()
    (empty,) = Router._sequenced_frames(fake, Batch.empty(), [], None, Marker({"": 4}, 4), 1000)
    assert empty[1:] == (0, 1) and decode_sequenced(empty[0]).marker == Marker({"": 4}, 4)
    frames = Router._sequenced_frames(fake, batch([100, 5000]), [5, 6], None, Marker({"": 6}, 6), 1000)
    assert [(events, holds) for _, events, holds in frames] == [(1, 1), (0, 1)]
    assert decode_sequenced(frames[-1][0]).marker == Marker({"": 6}, 6) and fake.metrics.dropped == 1


def test_cutting_frames_leaves_no_reference_cycles() -> None:
    """Garbage in cycles waits for the cyclic collector, which the work loops run rarely
    (runtime.tune_gc): a cycle per read batch kept every batch and its frames alive (gigabytes)."""
    fake = router()
    gc.collect()
    gc.disable()
    try:
        Router._frames(fake, batch([100] * 7 + [5000] + [100] * 8), 1000)
        Router._sequenced_frames(fake, batch([100] * 16), list(range(1, 17)), None, Marker({"": 16}, 16), 1000)
        assert gc.collect() == 0
    finally:
        gc.enable()
