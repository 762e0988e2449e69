"""The encodings the gateway's compressors write, and how to read them back.

An encoding names a framed format that a reader can undo without any other information:

* ``identity``: the payload as is;
* ``lz4``: one or more LZ4 frames (``lz4 -d`` decodes the concatenation);
* ``zstd``: one or more Zstandard frames (``zstd -d`` decodes the concatenation).

Frames concatenate, so a sink may append compressed batches to one file and read it back with
one :func:`decompress` call.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, Protocol

import lz4.frame
import zstandard

if TYPE_CHECKING:
    from savegress_gw.components import Context

FILE_SUFFIX = {"lz4": ".lz4", "zstd": ".zst", "identity": ""}
"""File-name suffix of each encoding (what ``lz4``/``zstd`` on the command line expect)."""

LEVELS = {"lz4": (1, 12), "zstd": (1, 22)}
"""Accepted compression levels of each algorithm, inclusive."""

Encoder = Callable[[bytes], bytes]
"""Compresses one payload into one complete frame."""


def encoder(encoding: str, level: int, window_log: int = 0) -> Encoder:
    """An :data:`Encoder` for ``encoding`` at ``level``; build it once and reuse it per batch.

    ``lz4``: a frame that records the content size; levels 1-2 are LZ4's fast mode, 3-12 LZ4-HC.
    ``zstd``: a frame that records the content size, from one compression context kept by the
    returned function (not thread-safe: one encoder per thread). ``window_log`` 0 lets the level
    choose the window; zstd also shrinks the window to the payload size.
    """
    if encoding == "lz4":
        return partial(lz4.frame.compress, compression_level=level, store_size=True)
    if encoding == "zstd":
        params = zstandard.ZstdCompressionParameters(
            compression_level=level, window_log=window_log, write_content_size=True)
        return zstandard.ZstdCompressor(compression_params=params).compress
    raise ValueError(f"cannot compress to encoding {encoding!r} (expected lz4 or zstd)")


def min_size(context: Context) -> int:
    """``compression.min_size`` of the context's profile: smaller payloads stay ``identity`` (0 without a profile)."""
    return 0 if context.profile is None else context.profile.compression.min_size


class _FrameDecoder(Protocol):
    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


_DECODERS: dict[str, Callable[[], _FrameDecoder]] = {
    "lz4": lz4.frame.LZ4FrameDecompressor,
    "zstd": lambda: zstandard.ZstdDecompressor().decompressobj(),
}


def decompress(data: bytes, encoding: str) -> bytes:
    """Undo ``encoding`` (``identity``, ``lz4`` or ``zstd``), reading every concatenated frame.

    Raises ValueError for an unknown encoding and for corrupt or truncated data.
    """
    if encoding == "identity":
        return data
    make = _DECODERS.get(encoding)
    if make is None:
        raise ValueError(f"unknown encoding {encoding!r} (expected one of {', '.join(FILE_SUFFIX)})")
    parts = []
    rest = data
    try:
        while rest:
            decoder = make()
            parts.append(decoder.decompress(rest))
            if not decoder.eof:
                raise ValueError(f"truncated {encoding} data: the last frame is incomplete")
            rest = decoder.unused_data
    except (RuntimeError, zstandard.ZstdError) as exc:
        raise ValueError(f"corrupt {encoding} data: {exc}") from exc
    return b"".join(parts)
