"""Turning a validated profile into component instances (no I/O: ``open()`` comes later)."""

from __future__ import annotations

from savegress_gw.components import Component, Context
from savegress_gw.errors import PluginError
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


def open_component(component: Component, context: Context) -> None:
    """``component.open(context)``; a failure is re-raised naming the component and its plugin."""
    try:
        component.open(context)
    except Exception as exc:
        cls = type(component)
        raise PluginError(
            f"{cls.kind} {cls.name!r} ({cls.__module__}.{cls.__qualname__}) failed to open: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
