"""Loading profiles: merge, interpolation, SAVEGRESS_* overrides, flags, validation messages, schema.

Everything goes through ``load_profile`` with YAML files in ``tmp_path`` and a registry of exactly
the built-in plugin modules imported below (never "whatever is installed").
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from savegress_gw.errors import ProfileError
from savegress_gw.profile import load_profile, profile_schema
from savegress_gw.profile.model import CORE_SECTIONS, NOT_YET_SECTIONS, PLUGIN_SECTIONS
from savegress_gw.testing import registry_of
from savegress_gw_plugins.backpressure import drop_newest, drop_oldest, pause
from savegress_gw_plugins.compressors import hybrid, lz4, none, zstd
from savegress_gw_plugins.limiters import adaptive, sliding_window, token_bucket
from savegress_gw_plugins.sinks import stdout
from savegress_gw_plugins.sources import http

REGISTRY = registry_of(
    none, lz4, zstd, hybrid, token_bucket, sliding_window, adaptive, pause, drop_oldest, drop_newest, stdout, http
)
COMPRESSORS = ["hybrid", "lz4", "none", "zstd"]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def load(*paths: Path, env: dict[str, str] | None = None, flags: tuple[str, ...] = ()):
    return load_profile(paths, REGISTRY, env={} if env is None else env, flags=flags)


def problems(*paths: Path, env: dict[str, str] | None = None, flags: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ProfileError) as info:
        load(*paths, env=env, flags=flags)
    assert str(info.value).startswith("invalid profile:")
    for problem in info.value.problems:
        assert f"  - {problem}" in str(info.value)  # the message lists every problem
    return info.value.problems


# ------------------------------------------------------------------------------------------ merge


def test_later_files_win_and_mappings_merge_key_by_key(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", """
        batching:
          max_size: 5
          max_wait: 1s
        compression:
          algorithm: zstd
          zstd:
            level: 9
            window_log: 20
        source:
          type: http
          tables: [public.a, public.b]
        gateway:
          id: base
    """)
    middle = write(tmp_path, "middle.yaml", """
        batching:
          max_size: 9
        compression:
          zstd:
            level: 4
        source:
          tables: [public.c]
        gateway:
          id: middle
    """)
    top = write(tmp_path, "top.yaml", """
        gateway:
          id: top
    """)
    profile = load(base, middle, top).profile
    assert profile.batching.max_size == 9
    assert profile.batching.max_wait == 1.0  # kept from base: mappings merge
    assert profile.compression.algorithm == "zstd"
    assert (profile.compression.zstd.level, profile.compression.zstd.window_log) == (4, 20)
    assert profile.source.tables == ["public.c"]  # lists replace
    assert profile.gateway.id == "top"
    # the same files in another order: the other one wins
    assert load(middle, base).profile.batching.max_size == 5
    assert load(top, middle).profile.gateway.id == "middle"


def test_no_files_gives_the_defaults(tmp_path: Path) -> None:
    empty = write(tmp_path, "empty.yaml", "")
    profile = load(empty).profile
    assert profile.batching.max_size == 100
    assert profile.compression.algorithm == "hybrid"
    assert profile.rate_limiting is None  # absent means off
    assert profile.selected("limiter") is None
    assert profile.selected("sink") == "stdout"


def test_yaml_problems_name_the_file(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.yaml", "batching:\n  max_size: [1,\n")
    (problem,) = problems(broken)
    assert problem.startswith(f"{broken}:") and "invalid YAML" in problem
    listing = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    assert problems(listing) == [f"{listing}: a profile must be a mapping of sections, got list"]
    missing = tmp_path / "missing.yaml"
    (problem,) = problems(missing)
    assert problem.startswith(f"{missing}: cannot read")


# ------------------------------------------------------------------------------------ interpolation


def test_variables_and_defaults_are_expanded(tmp_path: Path) -> None:
    path = write(tmp_path, "vars.yaml", """
        output:
          type: stdout
          format: ${FMT}
        gateway:
          id: ${GW_ID:-gw-default}
        batching:
          max_size: ${BATCH}
        source:
          type: http
          listen: "${HOST:-127.0.0.1}:${PORT}"
    """)
    profile = load(path, env={"FMT": "text", "BATCH": "42", "PORT": "9000"}).profile
    assert profile.output.format == "text"
    assert profile.gateway.id == "gw-default"
    assert profile.batching.max_size == 42
    assert profile.source.listen == "127.0.0.1:9000"
    assert load(path, env={"FMT": "json", "BATCH": "1", "PORT": "1", "GW_ID": "mine"}).profile.gateway.id == "mine"


def test_unset_variable_names_the_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, "unset.yaml", """
        gateway:
          id: ${GW_ID_NOT_SET}
    """)
    assert problems(path) == [
        "gateway.id: environment variable GW_ID_NOT_SET is not set (use ${GW_ID_NOT_SET:-default} for a default)"
    ]
    in_list = write(tmp_path, "list.yaml", """
        source:
          type: http
          tables: [public.a, "${TABLE_NOT_SET}"]
    """)
    (problem,) = problems(in_list)
    assert problem.startswith("source.tables[1]: environment variable TABLE_NOT_SET is not set")


def test_every_unset_variable_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "unset.yaml", """
        gateway:
          id: ${FIRST_NOT_SET}
        output:
          format: ${SECOND_NOT_SET}
    """)
    found = problems(path)
    assert any(p.startswith("gateway.id: environment variable FIRST_NOT_SET") for p in found)
    assert any(p.startswith("output.format: environment variable SECOND_NOT_SET") for p in found)


def test_per_event_template_variables_are_left_untouched(tmp_path: Path) -> None:
    path = write(tmp_path, "template.yaml", """
        source:
          type: http
          path: /v1/${database}/${schema}/${table}/${operation}/${PREFIX}
    """)
    profile = load(path, env={"PREFIX": "in", "table": "NOT-USED", "schema": "NOT-USED"}).profile
    assert profile.source.path == "/v1/${database}/${schema}/${table}/${operation}/in"


# ------------------------------------------------------------------------- environment and flags


def test_savegress_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", """
        batching:
          max_size: 5
        logging:
          level: info
    """)
    validated = load(path, env={
        "SAVEGRESS_BATCHING_MAX_SIZE": "7",
        "SAVEGRESS_BATCHING_MAX_WAIT": "250ms",
        "SAVEGRESS_BATCHING_ADAPTIVE": "true",
        "SAVEGRESS_RATE_LIMITING__TOKENS_PER_SECOND": "5",
        "SAVEGRESS_LOG_LEVEL": "debug",
        "SAVEGRESS_LOG_FORMAT": "text",
    })
    profile = validated.profile
    assert profile.batching.max_size == 7
    assert profile.batching.max_wait == 0.25
    assert profile.batching.adaptive is True
    assert profile.rate_limiting.algorithm == "token_bucket"  # the section's default component
    assert profile.rate_limiting.tokens_per_second == 5.0
    assert (profile.logging.level, profile.logging.format) == ("debug", "text")
    assert validated.warnings == []


def test_unmatched_savegress_variables_warn_and_others_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "batching: {max_size: 5}\n")
    validated = load(path, env={
        "SAVEGRESS_BATCHING_MAX_SIZ": "7",
        "SAVEGRESS_GW_DISABLE_PLUGINS": "sink.file",  # savegress-gw's own, not configuration
        "SAVEGRESS_KAFKA_HOME": "/opt/kafka",
        "OTHER_BATCHING_MAX_SIZE": "8",
    })
    assert validated.profile.batching.max_size == 5
    assert validated.warnings == ["environment variable SAVEGRESS_BATCHING_MAX_SIZ matches no profile key; ignored"]


def test_flags_beat_environment_beat_files(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "batching: {max_size: 5, max_wait: 1s}\n")
    env = {"SAVEGRESS_BATCHING_MAX_SIZE": "7", "SAVEGRESS_BATCHING_MAX_WAIT": "2s"}
    assert load(path).profile.batching.max_size == 5
    assert load(path, env=env).profile.batching.max_size == 7
    profile = load(path, env=env, flags=("batching.max_size=9",)).profile
    assert profile.batching.max_size == 9
    assert profile.batching.max_wait == 2.0  # the flag touched one key only
    later = load(path, env=env, flags=("batching.max_size=9", "batching.max_size=11")).profile
    assert later.batching.max_size == 11


def test_malformed_flag_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "")
    assert problems(path, flags=("batching.max_size",)) == ["--set 'batching.max_size': expected key.path=value"]


# ------------------------------------------------------------------------------- error messages


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", """
        compresion:
          algorithm: lz4
        batching:
          max_sise: 3
        compression:
          algorithm: lz4
          lz4:
            levle: 1
        rate_limiting:
          algorithm: token_bucket
          tokens_per_second: 0
        output:
          type: stdot
        backpressure:
          high_watermark: 0.3
          low_watermark: 0.5
        gateway:
          workers: 0
          heartbeat_timeout: soon
    """)
    found = problems(path)
    expected = [
        "compresion: unknown key; did you mean 'compression'?",
        "batching.max_sise: unknown key; did you mean 'batching.max_size'?",
        "compression.lz4.levle: unknown key; did you mean 'compression.lz4.level'?",
        "rate_limiting.tokens_per_second: Input should be greater than 0",
        "output.type: unknown sink 'stdot'; did you mean 'stdout'? (installed: stdout)",
        "backpressure: low_watermark (0.5) must be below high_watermark (0.3)",
        "gateway.workers: Input should be greater than or equal to 1",
        "gateway.heartbeat_timeout: invalid duration 'soon': expected a number with a unit such as 100ms, 1s, 5m, "
        "1h or 7d",
    ]
    assert sorted(found) == sorted(expected)


def test_typo_in_a_plugin_section_suggests_the_selected_components_key(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", """
        rate_limiting:
          algorithm: token_bucket
          tokens_per_secnd: 5
    """)
    assert problems(path) == [
        "rate_limiting.tokens_per_secnd: unknown key; did you mean 'rate_limiting.tokens_per_second'?"
    ]


def test_unknown_selector_suggests_and_lists_installed(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "compression:\n  algorithm: lz5\n")
    assert problems(path) == [
        f"compression.algorithm: unknown compressor 'lz5'; did you mean 'lz4'? (installed: {', '.join(COMPRESSORS)})"
    ]
    nothing_close = write(tmp_path, "far.yaml", "backpressure:\n  strategy: zzzzzz\n")
    assert problems(nothing_close) == [
        "backpressure.strategy: unknown backpressure 'zzzzzz' (installed: drop_newest, drop_oldest, pause)"
    ]


def test_known_but_unbuilt_components_are_not_implemented_yet(tmp_path: Path) -> None:
    path = write(tmp_path, "later.yaml", "source:\n  type: postgresql\n")  # alias of postgres
    assert problems(path) == ["not implemented yet: source.type: postgres"]


@pytest.mark.parametrize(
    ("text", "prefix"),
    [
        ("dlq:\n  enabled: true\n  max_retries: 5\n", "not implemented yet: dlq.type: file"),
        ("storage:\n  backend: gcs\n", "not implemented yet: storage "),
        ("storage:\n  backend: s3\n  compaction:\n    enabled: true\n", "not implemented yet: storage.compaction "),
        ("backpressure:\n  strategy: weighted_fair\n", "not implemented yet: backpressure.strategy: weighted_fair"),
        ("ha:\n  enabled: true\n  mode: active-active\n  cluster:\n    bind_address: h:1\n    peers: [g:1]\n",
         "not implemented yet: ha.mode: active-active "),
        ("cluster:\n  enabled: true\n", "not implemented yet: cluster "),
    ],
)
def test_not_implemented_yet_names_the_path(tmp_path: Path, text: str, prefix: str) -> None:
    path = write(tmp_path, "later.yaml", text)
    (problem,) = problems(path)
    assert problem.startswith(prefix)


def test_not_implemented_problems_are_all_listed_together(tmp_path: Path) -> None:
    path = write(tmp_path, "later.yaml", """
        dlq: {enabled: true}
        tracing: {enabled: true}
        backpressure: {strategy: weighted_fair}
        storage: {backend: azure}
    """)
    found = problems(path)
    assert len(found) == 4
    assert all(p.startswith("not implemented yet: ") for p in found)
    for key in ("dlq", "tracing", "backpressure.strategy", "storage"):
        assert any(p.startswith(f"not implemented yet: {key}") for p in found), key


def test_switched_off_unbuilt_features_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "off.yaml", """
        dlq: {enabled: false}
        exactly_once: {enabled: false}
        buffer:
          overflow_policy: drop_newest
    """)
    profile = load(path).profile
    assert profile.buffer.policy == "drop_newest"


def test_keys_of_an_unselected_algorithm_warn_but_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", """
        compression:
          algorithm: lz4
          zstd:
            level: 9
          hybrid:
            threshold: 1KB
    """)
    validated = load(path)
    assert validated.profile.compression.algorithm == "lz4"
    assert sorted(validated.warnings) == [
        "compression.hybrid: ignored, it configures algorithm 'hybrid' but compression.algorithm is 'lz4'",
        "compression.zstd: ignored, it configures algorithm 'zstd' but compression.algorithm is 'lz4'",
    ]
    typo = write(tmp_path, "typo.yaml", """
        compression:
          algorithm: lz4
          zstd:
            levle: 3
    """)
    (problem,) = problems(typo)
    assert problem.startswith("compression.zstd.levle:")
    out_of_range = write(tmp_path, "range.yaml", """
        compression:
          algorithm: lz4
          zstd:
            level: 99
    """)
    (problem,) = problems(out_of_range)
    assert problem.startswith("compression.zstd.level:")


def test_switching_algorithm_in_a_later_file_keeps_the_old_block_as_a_warning(tmp_path: Path) -> None:
    guide = write(tmp_path, "guide.yaml", "compression:\n  algorithm: zstd\n  zstd:\n    level: 9\n")
    mine = write(tmp_path, "mine.yaml", "compression:\n  algorithm: lz4\n  lz4:\n    level: 1\n")
    validated = load(guide, mine)
    assert (validated.profile.compression.algorithm, validated.profile.compression.lz4.level) == ("lz4", 1)
    assert validated.warnings == [
        "compression.zstd: ignored, it configures algorithm 'zstd' but compression.algorithm is 'lz4'"
    ]


# ---------------------------------------------------------------------------------- PORTAL dialect


def test_portal_dialect_is_folded_into_reference_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "portal.yaml", """
        source:
          type: http
          listen: 10.0.0.1:1
          options:
            listen: 0.0.0.0:9999
            path: /in
        output:
          type: stdout
          options:
            format: text
        monitoring:
          prometheus:
            enabled: false
            port: 9100
          logging:
            level: debug
    """)
    profile = load(path).profile
    assert profile.source.path == "/in"
    assert profile.source.listen == "10.0.0.1:1"  # the reference key wins over its PORTAL spelling
    assert profile.output.format == "text"
    assert profile.metrics.address == "127.0.0.1:9100"
    assert profile.metrics.enabled is False
    assert profile.logging.level == "debug"


def test_reference_keys_beat_the_monitoring_block(tmp_path: Path) -> None:
    path = write(tmp_path, "portal.yaml", """
        monitoring:
          prometheus:
            port: 9100
        metrics:
          address: 127.0.0.1:7000
    """)
    assert load(path).profile.metrics.address == "127.0.0.1:7000"


def test_unknown_option_in_portal_block_is_reported_at_its_folded_path(tmp_path: Path) -> None:
    path = write(tmp_path, "portal.yaml", """
        source:
          type: http
          options:
            lisen: 0.0.0.0:9999
    """)
    assert problems(path) == ["source.lisen: unknown key; did you mean 'source.listen'?"]


# ------------------------------------------------------------------------------------ JSON Schema


def test_schema_has_every_section_and_a_union_over_installed_compressors() -> None:
    schema = profile_schema(REGISTRY)
    json.dumps(schema)  # plain JSON
    assert schema["type"] == "object"
    assert schema["title"] == "savegress-gw profile"
    assert schema["additionalProperties"] is False
    sections = set(CORE_SECTIONS) | {spec.key for spec in PLUGIN_SECTIONS} | set(NOT_YET_SECTIONS)
    assert sections <= set(schema["properties"])

    compression = schema["properties"]["compression"]
    members = compression.get("oneOf") or compression.get("anyOf")
    assert members, compression
    defs = schema["$defs"]
    algorithms = set()
    for member in members:
        target = defs[member["$ref"].rsplit("/", 1)[-1]]
        algorithms.add(target["properties"]["algorithm"]["const"])
        assert target["additionalProperties"] is False
    assert algorithms == set(COMPRESSORS)

    batching = defs[schema["properties"]["batching"]["$ref"].rsplit("/", 1)[-1]]
    assert {"max_size", "max_wait", "adaptive", "mode", "interval"} <= set(batching["properties"])
    assert batching["properties"]["max_size"]["description"] == "Most events in one batch."
    assert "not implemented yet" in schema["properties"]["tracing"]["description"]


def test_schema_follows_the_registry() -> None:
    small = profile_schema(registry_of(lz4, stdout))
    members = small["properties"]["compression"].get("oneOf") or small["properties"]["compression"].get("anyOf")
    assert [m["$ref"].rsplit("/", 1)[-1] for m in members] == ["CompressionLz4Compressor"]
    assert "no limiter plugin is installed" in json.dumps(small["properties"]["rate_limiting"])


def test_schema_is_valid_json_schema_and_accepts_guide_profiles(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = profile_schema(REGISTRY)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    root = Path(__file__).resolve().parents[2]
    for name in ("low-latency", "ultra-low-latency", "at-most-once"):
        data = yaml.safe_load((root / "config" / "profiles" / f"{name}.yaml").read_text())
        assert [e.message for e in validator.iter_errors(data)] == [], name
    assert list(validator.iter_errors({"compression": {"algorithm": "lz5"}}))
    assert list(validator.iter_errors({"batching": {"max_sise": 3}}))


# ------------------------------------------------------------------- malformed input never crashes


def _no_crash(path: Path) -> None:
    """Loading either succeeds or raises ProfileError: never another exception (a traceback)."""
    try:
        load(path)
    except ProfileError as exc:
        assert exc.problems


@pytest.mark.parametrize("text", ["batching:\n", "compression: 5\n", "source: [http]\n", "rate_limiting:\n",
                                  "output:\n  type: 5\n"])
def test_odd_sections_are_problems_not_crashes(tmp_path: Path, text: str) -> None:
    _no_crash(write(tmp_path, "odd.yaml", text))


@pytest.mark.parametrize("section", ["compression", "output", "source", "backpressure"])
def test_empty_plugin_section_is_not_a_crash(tmp_path: Path, section: str) -> None:
    _no_crash(write(tmp_path, "empty.yaml", f"{section}:\n"))


@pytest.mark.parametrize("text", ["compression:\n  algorithm: [lz4]\n", "output:\n  type: {file: 1}\n"])
def test_non_scalar_selector_is_not_a_crash(tmp_path: Path, text: str) -> None:
    _no_crash(write(tmp_path, "odd.yaml", text))
