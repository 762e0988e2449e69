"""``compression.algorithm: lz4``: LZ4 frames, the fast choice for low-latency profiles."""

from __future__ import annotations

from typing import Callable

from pydantic import Field

from savegress_gw import ComponentConfig, Compressed, Compressor, Context, hookimpl
from savegress_gw.compression import LEVELS, encoder, min_size


class Lz4Options(ComponentConfig):
    level: int = Field(3, ge=LEVELS["lz4"][0], le=LEVELS["lz4"][1])
    """LZ4 level: 1-2 fast mode (fastest), 3-12 LZ4-HC (slower, smaller; 12 is the maximum)."""


class Lz4Compressor(Compressor):
    """Compresses each payload into one LZ4 frame (encoding ``lz4``, content size recorded).

    Payloads shorter than ``compression.min_size`` are returned as is, with encoding ``identity``.
    Frames concatenate: a file of appended payloads is decoded by ``lz4 -d``.
    """

    name = "lz4"

    class Config(ComponentConfig):
        lz4: Lz4Options = Lz4Options()
        """Settings of the LZ4 compressor."""

    def open(self, context: Context) -> None:
        self._min_size = min_size(context)
        self._encode = encoder("lz4", self.config.lz4.level)

    def compress(self, data: bytes) -> Compressed:
        if len(data) < self._min_size:
            return Compressed(data, "identity")
        return Compressed(self._encode(data), "lz4")


@hookimpl
def gw_register_components(register: Callable[[type[Compressor]], None]) -> None:
    register(Lz4Compressor)
