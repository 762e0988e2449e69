"""compression.algorithm: zstd, built through the profile as the guide writes it."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import zstandard

from savegress_gw.compression import FILE_SUFFIX, decompress
from savegress_gw.errors import ProfileError
from savegress_gw.testing import build, validated
from savegress_gw_plugins.compressors import hybrid, lz4, none, zstd as zstd_plugin
from savegress_gw_plugins.compressors.zstd import ZstdCompressor

COMPRESSORS = (none, lz4, zstd_plugin, hybrid)
GUIDE_BLOCKS = {
    "replication": ({"enabled": True, "algorithm": "zstd", "zstd": {"level": 5}}, 5),
    "batch": ({"enabled": True, "algorithm": "zstd", "zstd": {"level": 9}, "simd": {"enabled": True}}, 9),
    "high-volume": ({"enabled": True, "algorithm": "zstd", "zstd": {"level": 3},
                     "simd": {"enabled": True, "instruction_set": "auto"}}, 3),
    "brief": ({"algorithm": "zstd", "zstd": {"level": 9, "window_log": 0}}, 9),
}
BATCH = b"\n".join(
    json.dumps({"id": i, "operation": "INSERT", "table": "orders",
                "after": {"total": i * 13 % 1000, "sku": f"A-{i % 50}"}}).encode()
    for i in range(2000)
)


def compressor(section: dict) -> ZstdCompressor:
    built, _ = build("compressor", {"compression": section}, *COMPRESSORS)
    assert isinstance(built, ZstdCompressor)
    return built


@pytest.mark.parametrize("profile", GUIDE_BLOCKS)
def test_guide_blocks_build_and_round_trip(profile: str) -> None:
    section, level = GUIDE_BLOCKS[profile]
    c = compressor(section)
    assert c.config.zstd.level == level
    result = c.compress(BATCH)
    assert result.encoding == "zstd"
    assert len(result.data) < len(BATCH) / 4
    assert zstandard.get_frame_parameters(result.data).content_size == len(BATCH)
    assert decompress(result.data, result.encoding) == BATCH


def test_min_size_leaves_small_payloads_as_identity() -> None:
    c = compressor({"algorithm": "zstd", "min_size": 100})
    assert c.compress(BATCH[:99]).encoding == "identity"
    assert c.compress(BATCH[:99]).data == BATCH[:99]
    assert decompress(c.compress(BATCH[:100]).data, "zstd") == BATCH[:100]


def test_one_context_serves_many_batches() -> None:
    c = compressor({"algorithm": "zstd"})
    frames = [c.compress(BATCH[i:]).data for i in range(0, 4000, 1000)]
    assert [decompress(frame, "zstd") for frame in frames] == [BATCH[i:] for i in range(0, 4000, 1000)]
    assert c.compress(BATCH).data == frames[0]


def test_higher_level_compresses_better() -> None:
    assert len(compressor({"algorithm": "zstd", "zstd": {"level": 12}}).compress(BATCH).data) < \
        len(compressor({"algorithm": "zstd", "zstd": {"level": 1}}).compress(BATCH).data)


def test_window_log_sets_the_frame_window() -> None:
    small_window = compressor({"algorithm": "zstd", "zstd": {"window_log": 10}}).compress(BATCH).data
    auto = compressor({"algorithm": "zstd", "zstd": {"window_log": 0}}).compress(BATCH).data
    assert zstandard.get_frame_parameters(small_window).window_size == 1024
    assert zstandard.get_frame_parameters(auto).window_size >= len(BATCH)
    assert decompress(small_window, "zstd") == BATCH


@pytest.mark.parametrize("key,value,message", [
    ("level", 0, "Input should be greater than or equal to 1"),
    ("level", 23, "Input should be less than or equal to 22"),
    ("window_log", 9, "window_log must be 0 \\(auto\\) or between 10 and 27"),
    ("window_log", 28, "Input should be less than or equal to 27"),
])
def test_out_of_range_values_are_refused_at_their_key_path(key: str, value: int, message: str) -> None:
    with pytest.raises(ProfileError, match=rf"compression\.zstd\.{key}: {message}"):
        validated({"compression": {"algorithm": "zstd", "zstd": {key: value}}}, *COMPRESSORS)


def test_appended_outputs_decode_with_zstd_tool(tmp_path) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    c = compressor({"algorithm": "zstd", "zstd": {"level": 9}})
    path = tmp_path / f"segment{FILE_SUFFIX['zstd']}"
    path.write_bytes(c.compress(BATCH).data + c.compress(b"x" * 300).data)
    out = subprocess.run(["zstd", "-d", "-c", str(path)], capture_output=True, check=True).stdout
    assert out == BATCH + b"x" * 300
