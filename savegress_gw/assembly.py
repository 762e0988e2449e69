"""Turning a validated profile into component instances (no I/O: ``open()`` comes later)."""

from __future__ import annotations

from savegress_gw.components import Component
from savegress_gw.plugins import Registry
from savegress_gw.profile.model import ProfileBase


def instantiate(kind: str, profile: ProfileBase, registry: Registry) -> Component | None:
    """The component of ``kind`` that ``profile`` selects, built from its section; None when off."""
    name = profile.selected(kind)
    if name is None:
        return None
    cls = registry.get(kind, name)
    if cls is None:
        raise LookupError(f"no {kind} named {name!r} is registered in this process")
    section = profile.section_of(kind)
    own = {field: getattr(section, field) for field in cls.Config.model_fields}
    return cls(cls.Config.model_validate(own))
