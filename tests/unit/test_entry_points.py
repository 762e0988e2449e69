"""Built-in plugins follow the layout rules: one module per component, declared as an entry point.

``plugins/<kind>s/<name>.py`` ↔ entry point ``<kind>.<name>`` ↔ component ``name`` ↔ class
``<Name><Kind>``; every ``Config`` forbids unknown keys and its defaults validate.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from savegress_gw.components import KIND_BASES
from savegress_gw.testing import registry_of

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENTRY_POINTS: dict[str, str] = PYPROJECT["project"]["entry-points"]["savegress_gw"]
KIND_OF_DIRECTORY = {
    "sources": "source", "compressors": "compressor", "limiters": "limiter", "backpressure": "backpressure",
    "dlq": "dlq", "sinks": "sink",
}
MODULE_FILES = sorted(p for p in PLUGINS.glob("*/*.py") if p.stem != "__init__")


def _entry_point_of(path: Path) -> str:
    return f"{KIND_OF_DIRECTORY[path.parent.name]}.{path.stem}"


def _module_of(path: Path) -> str:
    return f"savegress_gw_plugins.{path.parent.name}.{path.stem}"


def test_every_kind_has_a_directory_and_a_package() -> None:
    assert set(KIND_OF_DIRECTORY.values()) == set(KIND_BASES)
    for directory in KIND_OF_DIRECTORY:
        assert (PLUGINS / directory / "__init__.py").is_file(), directory
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert {f"savegress_gw_plugins.{d}" for d in KIND_OF_DIRECTORY} <= packages
    assert PYPROJECT["tool"]["setuptools"]["package-dir"]["savegress_gw_plugins"] == "plugins"


def test_no_stray_plugin_directories() -> None:
    directories = {p.name for p in PLUGINS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert directories <= set(KIND_OF_DIRECTORY)


def test_every_module_has_its_entry_point() -> None:
    missing = {_entry_point_of(p): _module_of(p) for p in MODULE_FILES
               if ENTRY_POINTS.get(_entry_point_of(p)) != _module_of(p)}
    assert missing == {}, "modules without (or with a wrong) entry point in pyproject.toml"


def test_every_entry_point_has_its_module() -> None:
    declared = {_entry_point_of(p) for p in MODULE_FILES}
    orphans = {name: target for name, target in ENTRY_POINTS.items() if name not in declared}
    assert orphans == {}, "entry points whose module file does not exist under plugins/"


def test_entry_point_names_are_kind_dot_name() -> None:
    for name in ENTRY_POINTS:
        kind, _, component = name.partition(".")
        assert kind in KIND_BASES and component.isidentifier(), name


@pytest.mark.parametrize("path", MODULE_FILES, ids=_entry_point_of)
def test_built_in_component_follows_the_rules(path: Path) -> None:
    kind = KIND_OF_DIRECTORY[path.parent.name]
    module = importlib.import_module(_module_of(path))
    registry = registry_of(module)
    registered = [(k, n, cls) for k, by_name in registry.by_kind.items() for n, cls in by_name.items()]
    assert len(registered) == 1, f"{path.name} must register exactly one component"
    (registered_kind, name, cls), = registered
    assert registered_kind == kind
    assert name == cls.name == path.stem
    assert issubclass(cls, KIND_BASES[kind])
    assert cls.__module__ == module.__name__
    # <Name><Kind>: token_bucket -> TokenBucketLimiter, lz4 -> Lz4Compressor
    expected = "".join(part.title() for part in path.stem.split("_")) + kind.title().replace("Dlq", "DeadLetterQueue")
    assert cls.__name__.lower() == expected.lower(), cls.__name__
    assert cls.__doc__, f"{cls.__name__} needs a docstring (it becomes the schema description)"


@pytest.mark.parametrize("path", MODULE_FILES, ids=_entry_point_of)
def test_config_forbids_extra_keys_and_its_defaults_validate(path: Path) -> None:
    registry = registry_of(importlib.import_module(_module_of(path)))
    (cls,) = [c for by_name in registry.by_kind.values() for c in by_name.values()]
    config = cls.Config
    assert config.model_config.get("extra") == "forbid"
    with pytest.raises(ValidationError) as info:
        config.model_validate({"surely_not_a_key": 1})
    assert any(e["type"] == "extra_forbidden" and e["loc"] == ("surely_not_a_key",) for e in info.value.errors())

    # Every default must pass the field's own validation (pydantic does not check defaults by itself).
    checked = type(f"Checked{config.__name__}", (config,),
                   {"model_config": ConfigDict(**{**config.model_config, "validate_default": True})})
    try:
        built = checked()
    except ValidationError as exc:
        # Only required fields (a file source's `path`) may be missing; no default may be invalid.
        assert {e["type"] for e in exc.errors()} == {"missing"}, exc
        required = {e["loc"][0] for e in exc.errors()}
        assert required == {n for n, f in config.model_fields.items() if f.is_required()}
    else:
        # and what the defaults dump to (``10ms``, ``64KB``) reads back to the same config
        assert config.model_validate(built.model_dump(mode="json")) == config()
    for field_name, field in config.model_fields.items():
        assert field.description or _is_model(field.annotation), f"{cls.__name__}.Config.{field_name} needs a docstring"


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
