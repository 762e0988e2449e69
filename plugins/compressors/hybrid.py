"""``compression.algorithm: hybrid``: LZ4 for small payloads, Zstandard for large ones."""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field, ValidationInfo, field_validator

from savegress_gw import ComponentConfig, Compressed, Compressor, Context, hookimpl
from savegress_gw.compression import LEVELS, encoder, min_size
from savegress_gw.units import Size

Algorithm = Literal["lz4", "zstd"]


class HybridOptions(ComponentConfig):
    threshold: Size = 4096
    """Payloads smaller than this use ``small_algo``; this size and larger use ``large_algo``."""
    small_algo: Algorithm = "lz4"
    """Algorithm for payloads below ``threshold`` (speed priority)."""
    large_algo: Algorithm = "zstd"
    """Algorithm for payloads of ``threshold`` bytes or more (ratio priority)."""
    small_level: int = Field(3, ge=1)
    """Level of ``small_algo`` (lz4: 1-12, zstd: 1-22)."""
    large_level: int = Field(5, ge=1)
    """Level of ``large_algo`` (lz4: 1-12, zstd: 1-22)."""

    @field_validator("small_level", "large_level")
    @classmethod
    def _level_fits_algorithm(cls, level: int, info: ValidationInfo) -> int:
        algorithm = info.data.get(info.field_name.replace("_level", "_algo"))
        if algorithm is not None:
            low, high = LEVELS[algorithm]
            if not low <= level <= high:
                raise ValueError(f"{algorithm} levels are {low}-{high}, got {level}")
        return level


class HybridCompressor(Compressor):
    """Picks the algorithm per payload by size (encoding ``lz4`` or ``zstd`` accordingly).

    Payloads shorter than ``compression.min_size`` are returned as is (``identity``); others
    shorter than ``hybrid.threshold`` use ``small_algo`` at ``small_level``, the rest
    ``large_algo`` at ``large_level``. Both encoders are built once, in ``open``.
    """

    name = "hybrid"

    class Config(ComponentConfig):
        hybrid: HybridOptions = HybridOptions()
        """Settings of the hybrid compressor."""

    def open(self, context: Context) -> None:
        options = self.config.hybrid
        self._min_size = min_size(context)
        self._threshold = options.threshold
        self._small = (encoder(options.small_algo, options.small_level), options.small_algo)
        self._large = (encoder(options.large_algo, options.large_level), options.large_algo)

    def compress(self, data: bytes) -> Compressed:
        size = len(data)
        if size < self._min_size:
            return Compressed(data, "identity")
        encode, encoding = self._small if size < self._threshold else self._large
        return Compressed(encode(data), encoding)


@hookimpl
def gw_register_components(register: Callable[[type[Compressor]], None]) -> None:
    register(HybridCompressor)
