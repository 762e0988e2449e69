"""Reading profile files into one mapping: merge, interpolate, override.

Precedence, lowest first: built-in defaults < profile files in order < ``SAVEGRESS_*``
environment variables < command-line ``--set key.path=value`` flags. ``${VAR}`` and
``${VAR:-default}`` are expanded at load time everywhere except the per-event template
variables of topic templates (``${schema}``, ``${table}``, ``${database}``, ``${operation}``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from savegress_gw.errors import ProfileError

TEMPLATE_VARIABLES = frozenset({"schema", "table", "database", "operation"})
"""Left as ``${name}`` for the sink to expand per event."""

ENV_PREFIX = "SAVEGRESS_"
NON_CONFIG_ENV = ("SAVEGRESS_GW_", "SAVEGRESS_KAFKA_", "SAVEGRESS_TEST_", "SAVEGRESS_OFFLINE", "SAVEGRESS_PLATFORM_URL")
"""Environment variables with the prefix that are not configuration overrides."""
ENV_ALIASES = {"LOG_LEVEL": "logging.level", "LOG_FORMAT": "logging.format"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def read_profile_file(path: str | Path) -> dict[str, Any]:
    """Parse one YAML file; an empty file is an empty profile."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ProfileError([f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError([f"{path}: a profile must be a mapping of sections, got {type(data).__name__}"])
    return data


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into a copy of ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of ``value``.

    Raises :class:`ProfileError` naming the key path of every variable that is unset and has no
    default.
    """
    problems: list[str] = []
    result = _interpolate(value, env, "", problems)
    if problems:
        raise ProfileError(problems)
    return result


def _interpolate(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in TEMPLATE_VARIABLES and default is None:
            return match.group(0)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set (use ${{{name}:-default}} for a default)")
        return match.group(0)

    return _VAR.sub(substitute, value)


def normalize_dialects(data: dict[str, Any]) -> dict[str, Any]:
    """Fold the PORTAL dialect into the reference keys (``source.options.*`` → ``source.*``, ...)."""
    data = dict(data)
    for section in ("source", "output"):
        block = data.get(section)
        if isinstance(block, dict) and isinstance(block.get("options"), dict):
            block = dict(block)
            options = block.pop("options")
            if "start_lsn" in options:
                options = dict(options)
                options.setdefault("start_position", options.pop("start_lsn"))
            data[section] = deep_merge(options, block)
    monitoring = data.pop("monitoring", None)
    if isinstance(monitoring, dict):
        folded: dict[str, Any] = {}
        prometheus = monitoring.get("prometheus") or {}
        if "enabled" in prometheus:
            folded.setdefault("metrics", {})["enabled"] = prometheus["enabled"]
        if "port" in prometheus:
            folded.setdefault("metrics", {})["address"] = f"127.0.0.1:{prometheus['port']}"
        if isinstance(monitoring.get("logging"), dict):
            folded["logging"] = monitoring["logging"]
        data = deep_merge(folded, data)
    return data


def env_overrides(env: Mapping[str, str], known_paths: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """Overrides from ``SAVEGRESS_*`` variables, and warnings for those that match no key.

    ``SAVEGRESS_RATE_LIMITING__TOKENS_PER_SECOND`` (``__`` between levels) is exact;
    ``SAVEGRESS_RATE_LIMITING_TOKENS_PER_SECOND`` is matched against the known key paths.
    Values are parsed as YAML scalars (``true``, ``5``, ``10ms``).
    """
    by_flat = {path.replace(".", "_").upper(): path for path in known_paths}
    overrides: dict[str, Any] = {}
    warnings: list[str] = []
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name.startswith(NON_CONFIG_ENV):
            continue
        rest = name[len(ENV_PREFIX):]
        if "__" in rest:
            path = ".".join(part.lower() for part in rest.split("__"))
        else:
            path = ENV_ALIASES.get(rest) or by_flat.get(rest)
        if path is None:
            warnings.append(f"environment variable {name} matches no profile key; ignored")
            continue
        overrides = deep_merge(overrides, nest(path, parse_scalar(raw)))
    return overrides, warnings


def flag_overrides(assignments: Iterable[str]) -> dict[str, Any]:
    """Overrides from ``--set key.path=value`` flags."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path.strip():
            raise ProfileError([f"--set {assignment!r}: expected key.path=value"])
        overrides = deep_merge(overrides, nest(path.strip(), parse_scalar(raw)))
    return overrides


def nest(path: str, value: Any) -> dict[str, Any]:
    """``nest("a.b", 1)`` → ``{"a": {"b": 1}}``."""
    result: Any = value
    for part in reversed(path.split(".")):
        result = {part: result}
    return result


def parse_scalar(raw: str) -> Any:
    """A value from the environment or a flag, typed as YAML would type it."""
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def known_key_paths(schema: Mapping[str, Any]) -> list[str]:
    """Every key path of a profile JSON Schema (used to map flat environment variable names)."""
    defs = schema.get("$defs", {})
    paths: set[str] = set()

    def walk(node: Mapping[str, Any], prefix: str, depth: int) -> None:
        if depth > 6:
            return
        if "$ref" in node:
            node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
        for key in ("anyOf", "oneOf", "allOf"):
            for member in node.get(key, []):
                walk(member, prefix, depth + 1)
        for name, child in node.get("properties", {}).items():
            path = f"{prefix}.{name}" if prefix else name
            paths.add(path)
            walk(child, path, depth + 1)

    walk(schema, "", 0)
    return sorted(paths)


def load_raw(paths: Iterable[str | Path], env: Mapping[str, str] | None = None,
             flags: Iterable[str] = (), known_paths: Iterable[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """Merge files, interpolate, normalize dialects, apply environment and flag overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    for path in paths:
        data = deep_merge(data, read_profile_file(path))
    data = normalize_dialects(interpolate(data, env))
    from_env, warnings = env_overrides(env, known_paths)
    data = deep_merge(deep_merge(data, from_env), flag_overrides(flags))
    return data, warnings
