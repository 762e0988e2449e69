"""``compression.algorithm: zstd``: Zstandard frames, the best ratio for throughput profiles."""

from __future__ import annotations

from typing import Callable

from pydantic import Field, field_validator

from savegress_gw import ComponentConfig, Compressed, Compressor, Context, hookimpl
from savegress_gw.compression import LEVELS, encoder, min_size


class ZstdOptions(ComponentConfig):
    level: int = Field(3, ge=LEVELS["zstd"][0], le=LEVELS["zstd"][1])
    """ZSTD level: 1 fastest, 3 balanced, 9-15 better ratio, 19-22 maximum (slowest)."""
    window_log: int = Field(0, ge=0, le=27)
    """Log2 of the match window: 0 = chosen by the level; else 10-27 (27 = 128MB, the largest
    window every zstd decoder accepts by default)."""

    @field_validator("window_log")
    @classmethod
    def _auto_or_valid(cls, value: int) -> int:
        if 0 < value < 10:
            raise ValueError("window_log must be 0 (auto) or between 10 and 27")
        return value


class ZstdCompressor(Compressor):
    """Compresses each payload into one Zstandard frame (encoding ``zstd``, content size recorded).

    Payloads shorter than ``compression.min_size`` are returned as is, with encoding ``identity``.
    One compression context per instance is reused for every payload. Frames concatenate: a file
    of appended payloads is decoded by ``zstd -d``.
    """

    name = "zstd"

    class Config(ComponentConfig):
        zstd: ZstdOptions = ZstdOptions()
        """Settings of the Zstandard compressor."""

    def open(self, context: Context) -> None:
        self._min_size = min_size(context)
        self._encode = encoder("zstd", self.config.zstd.level, self.config.zstd.window_log)

    def compress(self, data: bytes) -> Compressed:
        if len(data) < self._min_size:
            return Compressed(data, "identity")
        return Compressed(self._encode(data), "zstd")


@hookimpl
def gw_register_components(register: Callable[[type[Compressor]], None]) -> None:
    register(ZstdCompressor)
