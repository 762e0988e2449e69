"""compression.algorithm: hybrid (the default): small payloads one way, large ones another."""

from __future__ import annotations

import json

import pytest

from savegress_gw.compression import decompress
from savegress_gw.errors import ProfileError
from savegress_gw.testing import build, validated
from savegress_gw_plugins.compressors import hybrid, lz4, none, zstd
from savegress_gw_plugins.compressors.hybrid import HybridCompressor

COMPRESSORS = (none, lz4, zstd, hybrid)
STREAMING = {"enabled": True, "algorithm": "hybrid",
             "hybrid": {"threshold": 4096, "small_algo": "lz4", "large_algo": "zstd", "large_level": 3}}
"""The guide's Streaming profile block."""
DATA = b"\n".join(json.dumps({"id": i, "table": "orders", "after": {"n": i}}).encode() for i in range(1000))


def compressor(section: dict) -> HybridCompressor:
    built, _ = build("compressor", {"compression": section}, *COMPRESSORS)
    assert isinstance(built, HybridCompressor)
    return built


def test_is_the_default_with_the_reference_defaults() -> None:
    options = compressor({}).config.hybrid
    assert (options.threshold, options.small_algo, options.small_level, options.large_algo, options.large_level) == \
        (4096, "lz4", 3, "zstd", 5)


def test_streaming_block_switches_at_the_threshold() -> None:
    c = compressor(STREAMING)
    assert c.config.hybrid.large_level == 3
    for size, encoding in [(255, "identity"), (256, "lz4"), (4095, "lz4"), (4096, "zstd"), (50_000, "zstd")]:
        result = c.compress(DATA[:size])
        assert result.encoding == encoding, size
        assert decompress(result.data, result.encoding) == DATA[:size]


def test_algorithms_can_be_swapped_and_threshold_takes_units() -> None:
    c = compressor({"hybrid": {"threshold": "1KB", "small_algo": "zstd", "small_level": 1,
                               "large_algo": "lz4", "large_level": 9}, "min_size": 0})
    assert c.compress(DATA[:1023]).encoding == "zstd"
    assert c.compress(DATA[:1024]).encoding == "lz4"
    assert decompress(c.compress(b"").data, "zstd") == b""


def test_levels_are_applied_per_size_class() -> None:
    low = compressor({"hybrid": {"small_level": 1, "large_level": 1}})
    high = compressor({"hybrid": {"small_level": 12, "large_level": 12}})
    assert len(high.compress(DATA[:4000]).data) < len(low.compress(DATA[:4000]).data)
    assert len(high.compress(DATA).data) < len(low.compress(DATA).data)


def test_min_size_above_threshold_wins() -> None:
    c = compressor({"min_size": "8KB", "hybrid": {"threshold": 4096}})
    assert c.compress(DATA[:8191]).encoding == "identity"
    assert c.compress(DATA[:8192]).encoding == "zstd"


@pytest.mark.parametrize("hybrid_block,path,message", [
    ({"small_level": 13}, "small_level", "lz4 levels are 1-12, got 13"),
    ({"large_level": 23}, "large_level", "zstd levels are 1-22, got 23"),
    ({"large_algo": "lz4", "large_level": 15}, "large_level", "lz4 levels are 1-12, got 15"),
    ({"small_level": 0}, "small_level", "Input should be greater than or equal to 1"),
    ({"small_algo": "gzip"}, "small_algo", "Input should be 'lz4' or 'zstd'"),
])
def test_invalid_settings_are_refused_at_their_key_path(hybrid_block: dict, path: str, message: str) -> None:
    with pytest.raises(ProfileError, match=rf"compression\.hybrid\.{path}: {message}"):
        validated({"compression": {"algorithm": "hybrid", "hybrid": hybrid_block}}, *COMPRESSORS)


def test_a_level_valid_for_zstd_is_accepted_when_zstd_is_chosen() -> None:
    c = compressor({"hybrid": {"small_algo": "zstd", "small_level": 22}})
    result = c.compress(DATA[:1000])
    assert result.encoding == "zstd"
    assert decompress(result.data, "zstd") == DATA[:1000]
