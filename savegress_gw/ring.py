"""A single-producer, single-consumer ring of variable-length frames in shared memory.

The source process writes frames (msgpack-encoded batches) into one ring per worker; the worker
reads them and *acknowledges* them only once every event they hold is delivered. Acknowledged
space is what the producer may reuse, so a frame that was read but not acknowledged is still in
the ring: a replacement worker starts reading at the acknowledged offset and sees again everything
its crashed predecessor held. That is how "nothing a crashed worker held is lost" works without
the source re-sending anything.

Layout: a 64-byte header of native, 8-byte aligned uint64 counters (one aligned load or store
each, so the other process never sees a torn value on x86-64), then ``capacity`` bytes of frames.
Offsets are monotonic byte counts; the position in the data area is ``offset % capacity``. A frame
is ``[uint32 length][payload]`` padded to 8 bytes; a length of ``WRAP`` (or fewer than 8 bytes left
before the end) sends the reader to the start of the data area.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, TypeVar

from multiprocess import shared_memory

HEADER_SIZE = 64
_HEAD, _ACK, _FRAMES_WRITTEN, _FRAMES_ACKED, _CAPACITY = 0, 8, 16, 24, 32
_U64 = struct.Struct("Q")
_LEN = struct.Struct("I")
WRAP = 0xFFFFFFFF
ALIGN = 8
T = TypeVar("T")


def _padded(size: int) -> int:
    return (size + ALIGN - 1) & ~(ALIGN - 1)


class RingFull(Exception):
    """The frame does not fit in the ring's free space right now."""


class FrameTooLarge(ValueError):
    """The frame can never fit: it is larger than the ring's whole capacity."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame read from the ring: its payload and the offset just past it (for acknowledging)."""

    payload: bytes
    end: int


class Ring:
    """One SPSC ring. Create with :meth:`create` (the supervisor), attach with :meth:`attach`."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self._owner = owner
        self._buf = shm.buf
        self.capacity = _U64.unpack_from(self._buf, _CAPACITY)[0]
        self._data = self._buf[HEADER_SIZE:HEADER_SIZE + self.capacity]
        self._read = self.acked_offset
        """The consumer's private read offset; starts at the acknowledged offset."""

    @classmethod
    def create(cls, name: str, capacity: int) -> "Ring":
        capacity = _padded(max(capacity, 4096))
        shm = shared_memory.SharedMemory(name=name, create=True, size=HEADER_SIZE + capacity)
        shm.buf[:HEADER_SIZE] = bytes(HEADER_SIZE)
        _U64.pack_into(shm.buf, _CAPACITY, capacity)
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> "Ring":
        shm = shared_memory.SharedMemory(name=name)
        # Children share the supervisor's resource tracker (multiprocess on both sides), which
        # keeps one registration per name and unlinks leftovers only after every process is gone.
        return cls(shm, owner=False)

    @property
    def max_frame(self) -> int:
        """Largest frame (header included) that :meth:`write` accepts: half the capacity, so that
        it always fits an empty ring wherever the write position is."""
        return self.capacity // 2

    @property
    def name(self) -> str:
        return self._shm.name

    # ------------------------------------------------------------------ counters (shared)

    def _get(self, offset: int) -> int:
        return _U64.unpack_from(self._buf, offset)[0]

    def _set(self, offset: int, value: int) -> None:
        _U64.pack_into(self._buf, offset, value)

    @property
    def head(self) -> int:
        """Bytes ever written (producer-owned)."""
        return self._get(_HEAD)

    @property
    def acked_offset(self) -> int:
        """Bytes ever released by the consumer."""
        return self._get(_ACK)

    @property
    def frames_written(self) -> int:
        return self._get(_FRAMES_WRITTEN)

    @property
    def frames_acked(self) -> int:
        return self._get(_FRAMES_ACKED)

    @property
    def used(self) -> int:
        """Bytes holding frames not yet acknowledged."""
        return self.head - self.acked_offset

    # ------------------------------------------------------------------ producer side

    def write(self, payload: bytes) -> None:
        """Append one frame. Raises :class:`RingFull` when it does not fit now (nothing written)."""
        size = _padded(_LEN.size + len(payload))
        if size > self.max_frame:
            raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the largest frame of this ring "
                                f"({self.max_frame} bytes, half its capacity)")
        head = self.head
        pos = head % self.capacity
        skip = self.capacity - pos if self.capacity - pos < size else 0
        if self.capacity - (head - self.acked_offset) < skip + size:
            raise RingFull
        if skip:
            if skip >= _LEN.size:
                _LEN.pack_into(self._data, pos, WRAP)
            head += skip
            pos = 0
        _LEN.pack_into(self._data, pos, len(payload))
        self._data[pos + _LEN.size:pos + _LEN.size + len(payload)] = payload
        self._set(_FRAMES_WRITTEN, self.frames_written + 1)
        self._set(_HEAD, head + size)  # publish last: the reader trusts everything below head

    # ------------------------------------------------------------------ consumer side

    def read(self, max_frames: int = 64) -> list[Frame]:
        """Frames written since the last read (at most ``max_frames``), oldest first."""
        return [Frame(bytes(self._data[start:stop]), end) for start, stop, end in self._next(max_frames)]

    def read_decoded(self, decode: Callable[[memoryview], T], max_frames: int = 1) -> list[tuple[T, int]]:
        """Like :meth:`read`, but each payload is handed to ``decode`` as a view of the shared memory
        instead of being copied out: ``(decode(view), end)`` per frame, oldest first. The view is
        released when ``decode`` returns, so ``decode`` must copy whatever it keeps."""
        decoded: list[tuple[T, int]] = []
        for start, stop, end in self._next(max_frames):
            with self._data[start:stop] as view:
                decoded.append((decode(view), end))
        return decoded

    def _next(self, max_frames: int) -> list[tuple[int, int, int]]:
        """``(start, stop, end)`` of the next frames in the data area (at most ``max_frames``), past
        which the read offset moves; ``end`` is the offset just past the frame."""
        frames: list[tuple[int, int, int]] = []
        head = self.head
        read = self._read
        while read < head and len(frames) < max_frames:
            pos = read % self.capacity
            if self.capacity - pos < _LEN.size:
                read += self.capacity - pos
                continue
            (length,) = _LEN.unpack_from(self._data, pos)
            if length == WRAP:
                read += self.capacity - pos
                continue
            start = pos + _LEN.size
            read += _padded(_LEN.size + length)
            frames.append((start, start + length, read))
        self._read = read
        return frames

    def ack(self, end: int, frames: int) -> None:
        """Release everything before offset ``end``, which completes ``frames`` more frames."""
        self._set(_FRAMES_ACKED, self.frames_acked + frames)
        self._set(_ACK, end)

    @property
    def unread(self) -> bool:
        """Whether frames were written that this consumer has not read yet."""
        return self._read < self.head

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Detach; the creating side also unlinks the segment."""
        self._data.release()
        self._buf = None  # type: ignore[assignment]
        self._shm.close()
        if self._owner:
            self._shm.unlink()
