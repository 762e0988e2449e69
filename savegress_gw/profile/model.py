"""Assembling the profile model from the core sections and the registered components.

Five sections pick a component with one of the guide's own keys (``source.type``,
``output.type``, ``compression.algorithm``, ``rate_limiting.algorithm``,
``backpressure.strategy``). Each such section validates against the section's common keys plus
the selected component's ``Config``; its JSON Schema is the union over every registered component.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, create_model

from savegress_gw.components import Component
from savegress_gw.errors import ProfileError
from savegress_gw.exactly_once.validation import exactly_once_problems
from savegress_gw.plugins import Registry
from savegress_gw.ha.validation import ha_problems
from savegress_gw.profile import cdc, ha, recovery
from savegress_gw.profile import settings as s


@dataclass(frozen=True)
class PluginSection:
    """A profile section whose selector key picks a registered component."""

    key: str
    kind: str
    selector: str
    default: str
    base: type[s.Section]
    known: tuple[str, ...]
    """Names the configuration surface defines: unregistered ones are 'not implemented yet'."""
    aliases: tuple[tuple[str, str], ...] = ()
    absent_means_off: bool = False
    """When the whole section is missing (or says ``enabled: false``), no component is built."""
    default_by_output: tuple[tuple[str, str], ...] = ()
    """Selector defaults that depend on ``output.type`` (the DLQ of a Kafka output is a topic)."""

    def default_for(self, data: dict[str, Any]) -> str:
        output = data.get("output")
        output_type = output.get("type") if isinstance(output, dict) else None
        return dict(self.default_by_output).get(output_type, self.default) if isinstance(output_type, str) \
            else self.default


PLUGIN_SECTIONS = (
    PluginSection(
        "source", "source", "type", "http", s.SourceSection,
        ("postgres", "mysql", "mariadb", "mongodb", "sqlserver", "cassandra", "dynamodb", "oracle",
         "kafka", "http", "generator", "file"),
        aliases=(("postgresql", "postgres"),),
    ),
    PluginSection(
        "output", "sink", "type", "stdout", s.OutputSection,
        ("stdout", "file", "webhook", "kafka", "grpc", "s3", "postgres"),
        aliases=(("http", "webhook"),),
    ),
    PluginSection("compression", "compressor", "algorithm", "hybrid", s.CompressionSection,
                  ("none", "lz4", "zstd", "hybrid")),
    PluginSection("rate_limiting", "limiter", "algorithm", "token_bucket", s.RateLimitingSection,
                  ("token_bucket", "sliding_window", "adaptive"), absent_means_off=True),
    PluginSection("backpressure", "backpressure", "strategy", "pause", s.BackpressureSection,
                  ("pause", "drop_oldest", "drop_newest", "buffer", "adaptive_throttle", "weighted_fair",
                   "deadline")),
    PluginSection("dlq", "dlq", "type", "file", s.DlqSection, ("file", "kafka"), absent_means_off=True,
                  default_by_output=(("kafka", "kafka"),)),
)
SECTION_BY_KIND = {section.kind: section for section in PLUGIN_SECTIONS}
SECTION_BY_KEY = {section.key: section for section in PLUGIN_SECTIONS}

CORE_SECTIONS: dict[str, type[s.Section]] = {
    "gateway": s.GatewaySettings,
    "batching": s.BatchingSettings,
    "buffer": s.BufferSettings,
    "parallel": s.ParallelSettings,
    "retry": s.RetrySettings,
    "circuit_breaker": s.CircuitBreakerSettings,
    "replication": s.ReplicationSettings,
    "exactly_once": s.ExactlyOnceSettings,
    "checkpoint": s.CheckpointSettings,
    "snapshot": cdc.SnapshotSettings,
    "ha": ha.HaSettings,
    "schema": cdc.SchemaSettings,
    "pitr": recovery.PitrSettings,
    "storage": recovery.StorageSettings,
    "logging": s.LoggingSettings,
    "metrics": s.MetricsSettings,
}

NOT_YET_SECTIONS = {
    "cluster": "the top-level cluster section; set ha.cluster",
    "multi_region": "multi-region replication",
    "tracing": "OpenTelemetry tracing",
    "sla": "SLA monitoring",
    "tls": "server TLS",
    "rbac": "role-based access control",
    "vault": "Vault secret references",
    "audit": "audit log",
    "license": "licensing (savegress-gw gates nothing)",
}


class ProfileBase(BaseModel):
    """Common behaviour of assembled profile models."""

    model_config = s.Section.model_config

    def section_of(self, kind: str) -> Any:
        """The validated section that configures ``kind`` (None when switched off)."""
        return getattr(self, SECTION_BY_KIND[kind].key)

    def selected(self, kind: str) -> str | None:
        """Name of the component selected for ``kind``, or None when the section is off."""
        spec = SECTION_BY_KIND[kind]
        section = getattr(self, spec.key)
        if not isinstance(section, BaseModel) or not getattr(section, "enabled", True):
            return None  # switched off, or no plugin of this kind is installed
        return getattr(section, spec.selector)


def field_name(key: str) -> str:
    """The model attribute of profile section ``key``: ``schema`` would shadow ``BaseModel.schema``,
    so such keys become ``<key>_section`` (validated under their own name through an alias)."""
    return key if key not in dir(BaseModel) else f"{key}_section"


def build_profile_model(registry: Registry) -> type[ProfileBase]:
    """The pydantic model of a whole profile with the components of ``registry``."""
    return _build(_registry_key(registry), registry)


def _registry_key(registry: Registry) -> tuple:
    return tuple((kind, tuple(sorted(by_name.items(), key=lambda kv: kv[0]))) for kind, by_name in registry.by_kind.items())


_models: dict[tuple, type[ProfileBase]] = {}


def _build(key: tuple, registry: Registry) -> type[ProfileBase]:
    if key in _models:
        return _models[key]
    fields: dict[str, Any] = {
        field_name(key): (cls, Field(default_factory=cls, alias=key)) for key, cls in CORE_SECTIONS.items()
    }
    for key_name, feature in NOT_YET_SECTIONS.items():
        fields[field_name(key_name)] = (s.not_yet(feature), Field(None, alias=key_name))
    for spec in PLUGIN_SECTIONS:
        union = _section_union(spec, registry)
        if spec.absent_means_off:
            fields[spec.key] = (union | None, None)
        else:
            fields[spec.key] = (union, Field(default_factory=dict, validate_default=True))
    model = create_model("Profile", __base__=ProfileBase, **fields)
    _models[key] = model
    return model


def section_model(spec: PluginSection, cls: type[Component]) -> type[s.Section]:
    """The model of ``spec``'s section when ``cls`` is selected: common keys + ``cls.Config``."""
    return _section_model(spec, cls)


@cache
def _section_model(spec: PluginSection, cls: type[Component]) -> type[s.Section]:
    clash = set(spec.base.model_fields) & set(cls.Config.model_fields)
    if clash:
        raise ValueError(f"{cls.__qualname__}.Config redefines {sorted(clash)} of section {spec.key!r}")
    return create_model(
        f"{spec.key.title().replace('_', '')}{cls.__name__}",
        __base__=(spec.base, cls.Config),
        __doc__=cls.__doc__,
        **{spec.selector: (Literal[cls.name], spec.default if spec.default == cls.name else ...)},
    )


def _section_union(spec: PluginSection, registry: Registry) -> Any:
    members = [
        Annotated[section_model(spec, cls), Tag(name)] for name, cls in sorted(registry.by_kind[spec.kind].items())
    ]
    if not members:
        return Annotated[dict[str, Any], Field(description=f"no {spec.kind} plugin is installed")]

    def tag(value: Any) -> str:
        if isinstance(value, dict):
            return value.get(spec.selector, spec.default)
        return getattr(value, spec.selector)

    return Annotated[Union[tuple(members)], Discriminator(tag)]  # noqa: UP007


# --------------------------------------------------------------------------------- validation


@dataclass
class Validated:
    """A validated profile, the warnings found on the way (keys that had no effect), and its input.

    ``data`` is the merged, interpolated input exactly as validated: what child processes get
    (secrets unmasked, durations as written) to validate again against their own registry.
    """

    profile: ProfileBase
    warnings: list[str]
    data: dict[str, Any]


def validate_profile(data: dict[str, Any], registry: Registry) -> Validated:
    """Validate merged profile data; raise :class:`ProfileError` listing every problem at once."""
    model = build_profile_model(registry)
    original, data = data, dict(data)
    problems: list[str] = []
    warnings: list[str] = []
    for spec in PLUGIN_SECTIONS:
        _select(spec, data, registry, problems, warnings)
    try:
        profile = model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_describe(error, registry, data) for error in exc.errors())
        raise ProfileError(problems) from None
    problems.extend(_cross_checks(profile, registry))
    if problems:
        raise ProfileError(problems)
    return Validated(profile, warnings, original)


def _cross_checks(profile: ProfileBase, registry: Registry) -> list[str]:
    """What each selected component says about its settings in the context of the whole profile."""
    problems = []
    for spec in PLUGIN_SECTIONS:
        name = profile.selected(spec.kind)
        cls = registry.get(spec.kind, name) if name else None
        if cls is not None:
            section = profile.section_of(spec.kind)
            config = cls.Config.model_validate({f: getattr(section, f) for f in cls.Config.model_fields})
            problems.extend(cls.check_profile(config, profile))
    return problems + exactly_once_problems(profile, registry) + ha_problems(profile)


def _select(spec: PluginSection, data: dict[str, Any], registry: Registry, problems: list[str],
            warnings: list[str]) -> None:
    """Resolve the selector of ``spec``'s section in place; strip keys of unselected components."""
    if spec.key in data and data[spec.key] is None:  # `compression:` with nothing under it
        data[spec.key] = {}
    raw = data.get(spec.key)
    if raw is None:
        return
    if not isinstance(raw, dict):
        problems.append(f"{spec.key}: expected a mapping, got {type(raw).__name__}")
        data.pop(spec.key)
        return
    raw = dict(raw)
    if spec.absent_means_off and raw.get("enabled") is False:
        data[spec.key] = None  # switched off: nothing of it is used, so nothing of it is checked
        return
    name = raw.get(spec.selector, spec.default_for(data))
    if not isinstance(name, str):
        problems.append(f"{spec.key}.{spec.selector}: expected a name, got {type(name).__name__}")
        data.pop(spec.key)
        return
    name = dict(spec.aliases).get(name, name)
    available = registry.by_kind[spec.kind]
    path = f"{spec.key}.{spec.selector}"
    if name not in available:
        if name in spec.known:
            problems.append(f"not implemented yet: {path}: {name}")
        else:
            choices = sorted(set(available) | set(spec.known))
            hint = difflib.get_close_matches(str(name), choices, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            problems.append(f"{path}: unknown {spec.kind} {name!r}{suggestion} (installed: {', '.join(sorted(available))})")
        data.pop(spec.key)
        return
    own = set(spec.base.model_fields) | set(available[name].Config.model_fields) | {spec.selector}
    for other_name, other in available.items():
        for field in sorted(set(other.Config.model_fields) - own):
            if field not in raw:
                continue
            value = raw.pop(field)
            try:  # still check it, so a typo in a block kept for later does not wait to bite
                other.Config.model_validate({field: value})
            except ValidationError as exc:
                problems.extend(
                    f"{spec.key}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
                )
            warnings.append(f"{spec.key}.{field}: ignored, it configures {spec.selector} {other_name!r} "
                            f"but {path} is {name!r}")
    raw[spec.selector] = name
    data[spec.key] = raw


def _describe(error: dict[str, Any], registry: Registry, data: dict[str, Any]) -> str:
    loc = list(error["loc"])
    if loc and loc[0] in SECTION_BY_KEY and len(loc) > 1:
        del loc[1]  # the union tag pydantic inserts after a plugin-selected section
    path = ".".join(str(part) for part in loc) or "(profile)"
    if error["type"] == "not_implemented":
        return f"not implemented yet: {path} {error['msg'].removeprefix('not implemented yet ')}"
    if error["type"] == "extra_forbidden":
        valid = _valid_keys(loc[:-1], registry, data)
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        suggestion = f"; did you mean {'.'.join(map(str, loc[:-1] + [hint[0]]))!r}?" if hint else ""
        return f"{path}: unknown key{suggestion}"
    return f"{path}: {error['msg'].removeprefix('Value error, ')}"


def _valid_keys(parents: list[Any], registry: Registry, data: dict[str, Any]) -> list[str]:
    """Field names allowed under ``parents`` (following the selected component in plugin sections)."""
    if not parents:
        return list(build_profile_model(registry).model_fields)
    head, *rest = parents
    if head in SECTION_BY_KEY:
        spec = SECTION_BY_KEY[head]
        raw = data.get(head) if isinstance(data.get(head), dict) else {}
        cls = registry.get(spec.kind, raw.get(spec.selector, spec.default_for(data)))
        current: Any = section_model(spec, cls) if cls else None
    else:
        current = CORE_SECTIONS.get(head)
    for part in rest:
        field = current.model_fields.get(part) if _is_model(current) else None
        current = _model_in(field.annotation) if field else None
    return list(current.model_fields) if _is_model(current) else []


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside ``annotation`` (through Optional and Annotated), if any."""
    if _is_model(annotation):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return getattr(annotation, "__origin__", None) if _is_model(getattr(annotation, "__origin__", None)) else None
