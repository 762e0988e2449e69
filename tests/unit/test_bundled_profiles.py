"""The profiles shipped in config/ validate with the installed plugins, and the guide's are verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from savegress_gw.errors import ProfileError
from savegress_gw.plugins import load_registry
from savegress_gw.profile import bundled_profiles, load_profile, resolve_profile_path

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "config" / "profiles").glob("*.yaml"))
QUICKSTART = ROOT / "config" / "quickstart.yaml"
SHIPPED = PROFILES + [QUICKSTART]
FULLY_VALID = {"low-latency", "streaming", "ultra-low-latency", "at-most-once", "batch", "replication", "quickstart"}
_HA_KAFKA_PIPELINE = """
source: {type: generator}
output: {type: kafka, brokers: ["kafka1:9092"], topic: orders}
ha: {cluster: {bind_address: "0.0.0.0:7000", advertise_address: "gw1:7000", peers: ["gw2:7000", "gw3:7000"]}}
"""
NEEDS_PIPELINE = {
    # exactly-once into Kafka on a 3-node HA cluster: valid once a pipeline file names the Kafka output
    # and this node's cluster addresses
    "enterprise-streaming": _HA_KAFKA_PIPELINE,
    # the same, with priority classes (each class is an ordinal lane of its own under exactly-once)
    "high-volume": _HA_KAFKA_PIPELINE,
}
REFUSED_WITH_A_PIPELINE = {
    # priority classes would split a Kafka source's partition lanes: refused for that source only
    "high-volume": (_HA_KAFKA_PIPELINE.replace("source: {type: generator}",
                                               'source: {type: kafka, brokers: ["kafka1:9092"], topics: [in]}'),
                    "backpressure.strategy: priorities reorder events between read batches, and source 'kafka'"),
}
GUIDE = ROOT.parent / "shared" / "spec" / "optimization-guide.md"


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_the_expected_profiles_are_shipped() -> None:
    names = {p.stem for p in PROFILES}
    assert {"low-latency", "streaming", "replication", "batch", "high-volume", "ultra-low-latency",
            "at-most-once", "enterprise-streaming"} <= names
    assert QUICKSTART.is_file()
    assert set(bundled_profiles()) == names
    assert resolve_profile_path("low-latency") == ROOT / "config" / "profiles" / "low-latency.yaml"


ALONE = [p for p in SHIPPED if p.stem not in NEEDS_PIPELINE and p.stem not in REFUSED_WITH_A_PIPELINE]


@pytest.mark.parametrize("path", ALONE, ids=[p.stem for p in ALONE])
def test_shipped_profile_validates_or_fails_only_as_not_implemented(path: Path, registry) -> None:
    try:
        validated = load_profile([path], registry, env={})
    except ProfileError as exc:
        assert path.stem not in FULLY_VALID, exc.problems
        assert exc.problems
        unexpected = [p for p in exc.problems if not p.startswith("not implemented yet:")]
        assert unexpected == []
    else:
        assert validated.profile is not None


@pytest.mark.parametrize("name", sorted(NEEDS_PIPELINE))
def test_profiles_that_need_a_pipeline_file_validate_with_one(name: str, registry, tmp_path: Path) -> None:
    path = ROOT / "config" / "profiles" / f"{name}.yaml"
    with pytest.raises(ProfileError):
        load_profile([path], registry, env={})
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(NEEDS_PIPELINE[name])
    validated = load_profile([path, pipeline], registry, env={})
    assert validated.warnings == []


@pytest.mark.parametrize("name", sorted(REFUSED_WITH_A_PIPELINE))
def test_profiles_refused_even_with_a_pipeline_say_why(name: str, registry, tmp_path: Path) -> None:
    pipeline_text, reason = REFUSED_WITH_A_PIPELINE[name]
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(pipeline_text)
    with pytest.raises(ProfileError) as info:
        load_profile([ROOT / "config" / "profiles" / f"{name}.yaml", pipeline], registry, env={})
    (problem,) = info.value.problems
    assert problem.startswith(reason)


@pytest.mark.parametrize("name", sorted(FULLY_VALID))
def test_runnable_profiles_validate_fully_without_warnings(name: str, registry) -> None:
    path = QUICKSTART if name == "quickstart" else ROOT / "config" / "profiles" / f"{name}.yaml"
    validated = load_profile([path], registry, env={})
    assert validated.warnings == []


def test_quickstart_means_what_its_comment_says(registry) -> None:
    profile = load_profile([QUICKSTART], registry, env={}).profile
    assert (profile.source.type, profile.source.listen) == ("http", "127.0.0.1:8080")
    assert profile.output.type == "file"
    assert profile.compression.algorithm == "lz4"


def test_low_latency_values(registry) -> None:
    profile = load_profile([ROOT / "config" / "profiles" / "low-latency.yaml"], registry, env={}).profile
    compression = profile.compression
    assert (compression.algorithm, compression.lz4.level, compression.min_size) == ("lz4", 1, 1024)
    assert (profile.batching.max_size, profile.batching.max_wait, profile.batching.adaptive) == (10, 0.01, False)
    assert (profile.buffer.size, profile.buffer.policy) == (4096, "drop_oldest")
    assert (profile.rate_limiting.tokens_per_second, profile.rate_limiting.burst_size) == (50000, 500)
    assert (profile.backpressure.strategy, profile.backpressure.high_watermark) == ("pause", 0.7)
    assert (profile.checkpoint.interval, profile.checkpoint.sync_mode) == (30.0, "async")


def _guide_blocks(text: str) -> dict[str, str]:
    """The yaml block under each ``## ... Profile`` heading, keyed by its profile file stem."""
    blocks: dict[str, str] = {}
    title = None
    for match in re.finditer(r"^## ([^\n]+)$|^```yaml\n(.*?)^```$", text, re.S | re.M):
        if match.group(1):
            title = match.group(1)
        elif title is not None and title.split(" (")[0].endswith(" Profile"):
            stem = title.split(" (")[0].removesuffix(" Profile").strip().lower().replace(" ", "-")
            assert stem not in blocks, f"two yaml blocks under {title!r}"
            blocks[stem] = match.group(2)
    return blocks


def test_guide_profiles_are_verbatim() -> None:
    if not GUIDE.is_file():
        pytest.skip(f"{GUIDE} is not there")
    blocks = _guide_blocks(GUIDE.read_text())
    assert {"low-latency", "streaming", "replication", "batch", "high-volume"} <= set(blocks)
    for stem, block in blocks.items():
        path = ROOT / "config" / "profiles" / f"{stem}.yaml"
        assert path.is_file(), f"the guide's {stem} profile is not shipped"
        first, rest = path.read_bytes().split(b"\n", 1)
        assert first.startswith(b"# "), path
        assert rest == block.encode(), f"{path.name} differs from the guide after its first line"
