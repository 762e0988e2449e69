"""Profiles: load, merge and validate the YAML configuration; its JSON Schema; bundled profiles."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from savegress_gw.errors import ProfileError
from savegress_gw.plugins import Registry
from savegress_gw.profile.loader import known_key_paths, load_raw
from savegress_gw.profile.model import ProfileBase, Validated, build_profile_model, validate_profile

__all__ = [
    "ProfileBase", "ProfileError", "Validated", "bundled_profiles", "load_profile", "profile_schema",
    "resolve_profile_path",
]

PROFILES_DIR_ENV = "SAVEGRESS_GW_PROFILES_DIR"


def profile_schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema of a whole profile with the installed components."""
    schema = build_profile_model(registry).model_json_schema(mode="validation")
    schema["title"] = "savegress-gw profile"
    return schema


def load_profile(paths: Iterable[str | Path], registry: Registry, *, env: Mapping[str, str] | None = None,
                 flags: Iterable[str] = ()) -> Validated:
    """Merge, interpolate, override and validate; raise :class:`ProfileError` with every problem."""
    files = [resolve_profile_path(p) for p in paths]
    data, env_warnings = load_raw(files, env=env, flags=flags, known_paths=known_key_paths(profile_schema(registry)))
    validated = validate_profile(data, registry)
    validated.warnings[:0] = env_warnings
    return validated


def bundled_profiles() -> dict[str, Path]:
    """Profiles shipped in ``config/profiles`` (or ``$SAVEGRESS_GW_PROFILES_DIR``), by name."""
    directory = Path(os.environ.get(PROFILES_DIR_ENV) or Path(__file__).resolve().parents[2] / "config" / "profiles")
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))} if directory.is_dir() else {}


def resolve_profile_path(path: str | Path) -> Path:
    """``path`` itself, or the bundled profile of that name (``-c low-latency``)."""
    candidate = Path(path)
    if candidate.exists() or candidate.suffix:
        return candidate
    return bundled_profiles().get(str(path), candidate)
