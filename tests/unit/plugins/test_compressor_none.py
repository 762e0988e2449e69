"""compression.algorithm: none."""

from __future__ import annotations

import pytest

from savegress_gw.compression import decompress
from savegress_gw.errors import ProfileError
from savegress_gw.testing import build, validated
from savegress_gw_plugins.compressors import hybrid, lz4, none, zstd
from savegress_gw_plugins.compressors.none import NoneCompressor

COMPRESSORS = (none, lz4, zstd, hybrid)


@pytest.mark.parametrize("data", [b"", b"tiny", b"x" * 100_000])
def test_returns_data_unchanged_as_identity(data: bytes) -> None:
    compressor, _ = build("compressor", {"compression": {"algorithm": "none", "min_size": 0}}, *COMPRESSORS)
    assert isinstance(compressor, NoneCompressor)
    result = compressor.compress(data)
    assert (result.data, result.encoding) == (data, "identity")
    assert decompress(result.data, result.encoding) == data


def test_has_no_keys_of_its_own() -> None:
    with pytest.raises(ProfileError, match=r"compression\.level: unknown key"):
        validated({"compression": {"algorithm": "none", "level": 1}}, *COMPRESSORS)


def test_compression_disabled_builds_no_compressor() -> None:
    assert validated({"compression": {"enabled": False, "algorithm": "zstd"}}, *COMPRESSORS).selected("compressor") is None
    with pytest.raises(LookupError, match="switches compressor off"):
        build("compressor", {"compression": {"enabled": False}}, *COMPRESSORS)
