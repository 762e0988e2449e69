"""The encodings the gateway writes: encoders, decompress() and file suffixes."""

from __future__ import annotations

import json
import shutil
import subprocess

import lz4.frame
import pytest
import zstandard

from savegress_gw.compression import FILE_SUFFIX, LEVELS, decompress, encoder

PAYLOAD = b"\n".join(
    json.dumps({"id": i, "operation": "INSERT", "table": "orders", "after": {"total": i * 7, "note": "abc" * 5}}).encode()
    for i in range(500)
)


@pytest.mark.parametrize("encoding", ["lz4", "zstd"])
@pytest.mark.parametrize("level", [1, 3, 12])
def test_encoder_round_trips_and_shrinks(encoding: str, level: int) -> None:
    encoded = encoder(encoding, level)(PAYLOAD)
    assert len(encoded) < len(PAYLOAD) / 3
    assert decompress(encoded, encoding) == PAYLOAD


def test_frames_record_the_content_size() -> None:
    assert lz4.frame.get_frame_info(encoder("lz4", 3)(PAYLOAD))["content_size"] == len(PAYLOAD)
    assert zstandard.get_frame_parameters(encoder("zstd", 3)(PAYLOAD)).content_size == len(PAYLOAD)


@pytest.mark.parametrize("encoding", ["lz4", "zstd"])
def test_concatenated_frames_decode_in_one_call(encoding: str) -> None:
    encode = encoder(encoding, 3)
    parts = [PAYLOAD[:1000], b"", PAYLOAD[1000:], b"tail"]
    assert decompress(b"".join(encode(part) for part in parts), encoding) == b"".join(parts)


def test_identity_and_empty_input() -> None:
    assert decompress(PAYLOAD, "identity") is PAYLOAD
    assert decompress(b"", "lz4") == b""
    assert decompress(b"", "zstd") == b""
    assert decompress(encoder("zstd", 1)(b""), "zstd") == b""


def test_unknown_encoding_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown encoding 'gzip' \(expected one of lz4, zstd, identity\)"):
        decompress(b"abc", "gzip")
    with pytest.raises(ValueError, match="cannot compress to encoding 'gzip'"):
        encoder("gzip", 1)


@pytest.mark.parametrize("encoding", ["lz4", "zstd"])
def test_corrupt_and_truncated_data_are_value_errors(encoding: str) -> None:
    frame = encoder(encoding, 3)(PAYLOAD)
    with pytest.raises(ValueError, match=f"corrupt {encoding} data"):
        decompress(b"definitely not a frame", encoding)
    with pytest.raises(ValueError, match=f"truncated {encoding} data"):
        decompress(frame[: len(frame) // 2], encoding)
    with pytest.raises(ValueError, match=f"truncated {encoding} data"):
        decompress(frame + frame[:10], encoding)


def test_file_suffixes_and_levels() -> None:
    assert FILE_SUFFIX == {"lz4": ".lz4", "zstd": ".zst", "identity": ""}
    assert LEVELS == {"lz4": (1, 12), "zstd": (1, 22)}


@pytest.mark.parametrize("encoding,tool", [("lz4", "lz4"), ("zstd", "zstd")])
def test_command_line_tools_decode_concatenated_frames(encoding: str, tool: str, tmp_path) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    encode = encoder(encoding, 5)
    path = tmp_path / f"segment.jsonl{FILE_SUFFIX[encoding]}"
    path.write_bytes(encode(PAYLOAD) + encode(b"second batch\n"))
    result = subprocess.run([tool, "-d", "-c", str(path)], capture_output=True, check=True)
    assert result.stdout == PAYLOAD + b"second batch\n"
