"""Helpers for testing components, for this project and for plugin authors.

Tests name the plugins they load (``registry_of(module, ...)``), never "whatever is installed".
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import structlog

from savegress_gw.assembly import instantiate
from savegress_gw.components import Batch, Component, Context, Outcome
from savegress_gw.plugins import Registry, load_registry
from savegress_gw.profile.model import ProfileBase, validate_profile
from savegress_gw.shared import SharedBlock


def registry_of(*modules: ModuleType) -> Registry:
    """A registry with exactly the components that ``modules`` register."""
    return load_registry(modules=modules)


def validated(data: dict[str, Any], *modules: ModuleType) -> ProfileBase:
    """Validate profile ``data`` against the components of ``modules`` (raises ProfileError)."""
    return validate_profile(data, registry_of(*modules)).profile


def build(kind: str, data: dict[str, Any], *modules: ModuleType) -> tuple[Component, Context]:
    """Instantiate and open the component of ``kind`` selected by profile ``data``.

    Returns the opened component and its context (with a fresh SharedBlock when it asks for one).
    """
    registry = registry_of(*modules)
    profile = validate_profile(data, registry).profile
    component = instantiate(kind, profile, registry)
    if component is None:
        raise LookupError(f"the profile switches {kind} off")
    context = make_context(profile, shared=SharedBlock(component.shared_slots) if component.shared_slots else None)
    component.open(context)
    return component, context


def build_sink(data: dict[str, Any], *modules: ModuleType) -> Component:
    """The sink that profile ``data`` selects, opened as a worker opens it: with the profile's
    compressor (itself opened) in its context."""
    registry = registry_of(*modules)
    profile = validate_profile(data, registry).profile
    compressor = instantiate("compressor", profile, registry)
    if compressor is not None:
        compressor.open(make_context(profile))
    sink = instantiate("sink", profile, registry)
    if sink is None:
        raise LookupError("the profile selects no sink")
    sink.open(make_context(profile, compressor=compressor))
    return sink


def send_one(sink: Component, batch: Batch) -> Outcome:
    """``sink.send(batch)`` for a sink that reports from ``send`` itself; its one outcome."""
    outcomes: list[Outcome] = []
    sink.send(batch, outcomes.append)
    [outcome] = outcomes
    return outcome


def make_context(profile: ProfileBase | None = None, *, process: str = "test", worker_index: int = 0,
                 shared: SharedBlock | None = None, **kwargs: Any) -> Context:
    return Context(process=process, worker_index=worker_index, log=structlog.get_logger().bind(process=process),
                   profile=profile, shared=shared, **kwargs)


__all__ = ["build", "build_sink", "instantiate", "make_context", "registry_of", "send_one", "validated"]
