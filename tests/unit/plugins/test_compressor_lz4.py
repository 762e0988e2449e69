"""compression.algorithm: lz4, built through the profile as the guide writes it."""

from __future__ import annotations

import json
import shutil
import subprocess

import lz4.frame
import pytest

from savegress_gw.compression import FILE_SUFFIX, decompress
from savegress_gw.errors import ProfileError
from savegress_gw.testing import build, make_context, validated
from savegress_gw_plugins.compressors import hybrid, lz4 as lz4_plugin, none, zstd
from savegress_gw_plugins.compressors.lz4 import Lz4Compressor

COMPRESSORS = (none, lz4_plugin, zstd, hybrid)
LOW_LATENCY = {"enabled": True, "algorithm": "lz4", "lz4": {"level": 1}, "min_size": 1024}
"""The guide's Low Latency profile block."""
BATCH = b"\n".join(
    json.dumps({"id": i, "operation": "UPDATE", "table": "metrics", "after": {"value": i % 97, "host": "web-1"}}).encode()
    for i in range(1000)
)


def compressor(section: dict) -> Lz4Compressor:
    built, _ = build("compressor", {"compression": section}, *COMPRESSORS)
    assert isinstance(built, Lz4Compressor)
    return built


def test_low_latency_block_builds_and_skips_small_messages() -> None:
    c = compressor(LOW_LATENCY)
    assert c.config.lz4.level == 1
    small = c.compress(BATCH[:1023])
    assert (small.data, small.encoding) == (BATCH[:1023], "identity")
    at_min = c.compress(BATCH[:1024])
    assert at_min.encoding == "lz4"
    assert decompress(at_min.data, "lz4") == BATCH[:1024]


def test_batch_round_trips_smaller_with_content_size() -> None:
    result = compressor(LOW_LATENCY).compress(BATCH)
    assert result.encoding == "lz4"
    assert len(result.data) < len(BATCH) / 3
    assert lz4.frame.get_frame_info(result.data)["content_size"] == len(BATCH)
    assert decompress(result.data, result.encoding) == BATCH


def test_defaults_level_3_and_min_size_256() -> None:
    c = compressor({"algorithm": "lz4"})
    assert c.config.lz4.level == 3
    assert c.compress(BATCH[:255]).encoding == "identity"
    assert c.compress(BATCH[:256]).encoding == "lz4"


def test_min_size_accepts_size_units() -> None:
    c = compressor({"algorithm": "lz4", "min_size": "2KB"})
    assert c.compress(BATCH[:2047]).encoding == "identity"
    assert c.compress(BATCH[:2048]).encoding == "lz4"


def test_higher_level_compresses_better() -> None:
    fast = compressor({"algorithm": "lz4", "lz4": {"level": 1}}).compress(BATCH)
    high = compressor({"algorithm": "lz4", "lz4": {"level": 12}}).compress(BATCH)
    assert len(high.data) < len(fast.data)
    assert decompress(high.data, "lz4") == BATCH


@pytest.mark.parametrize("level", [0, 13, -1])
def test_out_of_range_level_is_refused_at_its_key_path(level: int) -> None:
    with pytest.raises(ProfileError, match=r"compression\.lz4\.level: Input should be"):
        validated({"compression": {"algorithm": "lz4", "lz4": {"level": level}}}, *COMPRESSORS)


def test_unknown_lz4_key_is_refused() -> None:
    with pytest.raises(ProfileError, match=r"compression\.lz4\.acceleration: unknown key"):
        validated({"compression": {"algorithm": "lz4", "lz4": {"acceleration": 2}}}, *COMPRESSORS)


def test_without_profile_min_size_is_zero() -> None:
    c = Lz4Compressor(Lz4Compressor.Config())
    c.open(make_context())
    result = c.compress(b"ab")
    assert result.encoding == "lz4"
    assert decompress(result.data, "lz4") == b"ab"


def test_appended_outputs_decode_with_lz4_tool(tmp_path) -> None:
    if shutil.which("lz4") is None:
        pytest.skip("lz4 is not installed")
    c = compressor(LOW_LATENCY)
    path = tmp_path / f"segment{FILE_SUFFIX['lz4']}"
    path.write_bytes(c.compress(BATCH).data + c.compress(BATCH[:5000]).data)
    out = subprocess.run(["lz4", "-d", "-c", str(path)], capture_output=True, check=True).stdout
    assert out == BATCH + BATCH[:5000]
