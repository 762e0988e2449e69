"""``compression.algorithm: none``: everything the gateway writes is left as is."""

from __future__ import annotations

from typing import Callable

from savegress_gw import Compressed, Compressor, hookimpl


class NoneCompressor(Compressor):
    """Returns every payload unchanged with encoding ``identity`` (the lowest-latency choice)."""

    name = "none"

    def compress(self, data: bytes) -> Compressed:
        return Compressed(data, "identity")


@hookimpl
def gw_register_components(register: Callable[[type[Compressor]], None]) -> None:
    register(NoneCompressor)
