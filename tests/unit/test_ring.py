"""The shared-memory SPSC ring: order, wraparound, full/too-large, acknowledged replay, two processes."""

from __future__ import annotations

import random
import struct
import time
import uuid
from collections.abc import Iterator

import multiprocess
import pytest
from multiprocess import shared_memory

from savegress_gw.ring import FrameTooLarge, Ring, RingFull

CROSS_PROCESS_FRAMES = 200_000
_SEQ = struct.Struct("<Q")


def unique_name() -> str:
    return f"sgw-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture()
def ring() -> Iterator[Ring]:
    created = Ring.create(unique_name(), 4096)
    try:
        yield created
    finally:
        created.close()


def payload(i: int, size: int) -> bytes:
    return _SEQ.pack(i) + bytes([i % 251]) * max(0, size - _SEQ.size)


def drain(ring: Ring) -> list[bytes]:
    out = []
    while frames := ring.read():
        out.extend(f.payload for f in frames)
        ring.ack(frames[-1].end, len(frames))
    return out


def test_create_rounds_capacity_and_starts_empty(ring: Ring) -> None:
    assert ring.capacity == 4096
    assert (ring.head, ring.acked_offset, ring.used, ring.frames_written, ring.frames_acked) == (0, 0, 0, 0, 0)
    assert not ring.unread
    assert ring.read() == []
    small = Ring.create(unique_name(), 100)  # at least 4096, 8-byte aligned
    odd = Ring.create(unique_name(), 5001)
    try:
        assert small.capacity == 4096
        assert odd.capacity == 5008
    finally:
        small.close()
        odd.close()


def test_frames_come_back_in_order_with_their_ends(ring: Ring) -> None:
    payloads = [b"a", b"", b"hello world", bytes(range(200)), b"x" * 7, b"y" * 8]
    for p in payloads:
        ring.write(p)
    assert ring.frames_written == len(payloads)
    assert ring.unread
    frames = ring.read(max_frames=4)
    assert [f.payload for f in frames] == payloads[:4]
    ends = [f.end for f in frames]
    assert ends == sorted(ends) and all(e % 8 == 0 for e in ends)
    assert ends[0] == 8  # 4-byte length + 1 byte, padded
    rest = ring.read()
    assert [f.payload for f in rest] == payloads[4:]
    assert rest[-1].end == ring.head
    assert not ring.unread
    assert ring.used == ring.head  # read but not acknowledged: still held
    ring.ack(frames[1].end, 2)
    assert (ring.acked_offset, ring.frames_acked, ring.used) == (frames[1].end, 2, ring.head - frames[1].end)
    ring.ack(rest[-1].end, 4)
    assert (ring.used, ring.frames_acked) == (0, 6)


def test_wraparound_with_varied_sizes(ring: Ring) -> None:
    rng = random.Random(7)
    written: list[bytes] = []
    received: list[bytes] = []
    i = 0
    while len(received) < 3000:
        # write until full, then read a random share and acknowledge it
        while True:
            candidate = payload(i, rng.choice([0, 1, 8, 13, 64, 300, 1000, 2000]))
            try:
                ring.write(candidate)
            except RingFull:
                break
            written.append(candidate)
            i += 1
        frames = ring.read(max_frames=rng.randint(1, 20))
        assert frames, "a full ring has frames to read"
        received.extend(f.payload for f in frames)
        ring.ack(frames[-1].end, len(frames))
    received.extend(drain(ring))
    assert received == written
    assert ring.head > 20 * ring.capacity  # wrapped many times
    assert ring.frames_acked == ring.frames_written == len(written)


def test_ring_full_writes_nothing_and_recovers_after_ack(ring: Ring) -> None:
    count = 0
    with pytest.raises(RingFull):
        while True:
            ring.write(payload(count, 100))
            count += 1
    assert count == 4096 // 104  # frames of 4 + 100 bytes (already 8-aligned)
    before = (ring.head, ring.frames_written)
    with pytest.raises(RingFull):
        ring.write(b"z" * 100)
    assert (ring.head, ring.frames_written) == before
    first = ring.read(max_frames=1)
    with pytest.raises(RingFull):  # read is not enough: only acknowledged space is reused
        ring.write(b"z" * 100)
    ring.ack(first[0].end, 1)
    ring.write(b"z" * 100)
    assert drain(ring)[-1] == b"z" * 100


def test_frame_too_large(ring: Ring) -> None:
    with pytest.raises(FrameTooLarge, match="exceeds the largest frame of this ring"):
        ring.write(b"x" * 2045)
    assert ring.frames_written == 0
    ring.write(b"x" * 2044)  # exactly half the capacity with its length prefix
    assert drain(ring) == [b"x" * 2044]
    assert issubclass(FrameTooLarge, ValueError)


def test_a_frame_that_fits_the_capacity_fits_an_empty_ring(ring: Ring) -> None:
    ring.write(b"a" * 2044)  # one 2048-byte frame: the head is now half-way round
    drain(ring)
    assert (ring.used, ring.head) == (0, 2048)
    try:
        ring.write(b"x" * 3000)  # 3008 bytes < 4096, and the ring is empty: RingFull would mean "retry forever"
    except FrameTooLarge:
        return  # refusing, for good, frames that cannot always be placed would be a fix too
    assert drain(ring) == [b"x" * 3000]


def test_replacement_consumer_rereads_unacknowledged_frames(ring: Ring) -> None:
    for i in range(10):
        ring.write(payload(i, 20))
    first = Ring.attach(ring.name)
    try:
        frames = first.read()
        assert len(frames) == 10
        first.ack(frames[3].end, 4)  # delivered 0..3; 4..9 were read but not delivered when it "crashed"
    finally:
        first.close()
    second = Ring.attach(ring.name)
    try:
        again = second.read()
        assert [f.payload for f in again] == [payload(i, 20) for i in range(4, 10)]
        assert again[0].end == frames[4].end
        assert second.frames_acked == 4
    finally:
        second.close()
    assert ring.used == ring.head - frames[3].end  # the creator sees the same counters


def test_attach_starts_at_the_acknowledged_offset(ring: Ring) -> None:
    for i in range(6):
        ring.write(payload(i, 30))
    crashed = Ring.attach(ring.name)
    try:
        frames = crashed.read()
        crashed.ack(frames[1].end, 2)
    finally:
        crashed.close()
    replacement = Ring.attach(ring.name)
    try:
        assert replacement.name == ring.name
        assert replacement.capacity == ring.capacity
        assert [f.payload for f in replacement.read()] == [payload(i, 30) for i in range(2, 6)]
    finally:
        replacement.close()
    ring.write(b"still usable after consumers detached")


def test_close_of_the_creator_unlinks(ring: Ring) -> None:
    other = Ring.create(unique_name(), 4096)
    name = other.name
    other.close()
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=name)


# ------------------------------------------------------------------------------- two processes


def _consume(name: str, total: int, deadline: float) -> None:
    ring = Ring.attach(name)
    try:
        expected = 0
        while expected < total:
            frames = ring.read(max_frames=256)
            if not frames:
                if time.monotonic() > deadline:
                    raise SystemExit(f"consumer timed out at frame {expected}")
                continue
            for frame in frames:
                (seq,) = _SEQ.unpack_from(frame.payload)
                if seq != expected or len(frame.payload) != _SEQ.size + seq % 17:
                    raise SystemExit(f"frame {expected}: got sequence {seq} of {len(frame.payload)} bytes")
                expected += 1
            ring.ack(frames[-1].end, len(frames))
    finally:
        ring.close()


def test_cross_process_producer_consumer_in_order() -> None:
    ring = Ring.create(unique_name(), 64 * 1024)
    ctx = multiprocess.get_context("spawn")
    deadline = time.monotonic() + 50
    consumer = ctx.Process(target=_consume, args=(ring.name, CROSS_PROCESS_FRAMES, deadline), daemon=True)
    consumer.start()
    try:
        i = 0
        spins = 0
        while i < CROSS_PROCESS_FRAMES:
            try:
                ring.write(_SEQ.pack(i) + b"p" * (i % 17))
            except RingFull:
                spins += 1
                if spins % 1000 == 0:
                    assert consumer.is_alive() or consumer.exitcode == 0, f"consumer died: {consumer.exitcode}"
                    assert time.monotonic() < deadline, f"producer stuck at frame {i}"
                continue
            i += 1
        consumer.join(timeout=max(1.0, deadline - time.monotonic()))
        assert consumer.exitcode == 0, f"consumer exit code {consumer.exitcode}"
        assert ring.frames_acked == ring.frames_written == CROSS_PROCESS_FRAMES
        assert ring.used == 0
        assert spins > 0  # the ring really filled up: the consumer's acks freed the space
    finally:
        if consumer.is_alive():
            consumer.kill()
            consumer.join()
        ring.close()
