"""Loading plugins and collecting the components they register.

One route for everything: :func:`get_plugin_manager` loads every entry point in group
``savegress_gw`` (the built-ins are declared there too, in this project's ``pyproject.toml``),
minus those blocked by ``SAVEGRESS_GW_DISABLE_PLUGINS``. Tests pass ``modules=`` to get exactly
the plugins they name.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

import pluggy

from savegress_gw import hookspecs
from savegress_gw.components import KIND_BASES, Component, ComponentConfig
from savegress_gw.errors import PluginError

DISABLE_ENV = "SAVEGRESS_GW_DISABLE_PLUGINS"
"""Comma-separated entry-point names (``sink.file,compressor.zstd``) that are not loaded."""


class GatewayPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution each entry-point plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.distributions: dict[str, tuple[str, str]] = {}
        """Plugin name → (distribution name, version)."""


def get_plugin_manager(*, modules: Iterable[ModuleType] | None = None) -> GatewayPluginManager:
    """A fresh plugin manager with every installed plugin, or exactly ``modules`` when given.

    Raises :class:`PluginError` naming the entry point when a plugin fails to import, and
    whatever ``check_pending()`` finds when a plugin implements a hook that does not exist.
    """
    pm = GatewayPluginManager()
    pm.add_hookspecs(hookspecs)
    if modules is None:
        for name in blocked_plugins():
            pm.set_blocked(name)
        _load_entry_points(pm)
    else:
        for module in modules:
            pm.register(module)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc
    return pm


def blocked_plugins() -> list[str]:
    """The entry-point names blocked through :data:`DISABLE_ENV`."""
    return [name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()]


def _load_entry_points(pm: GatewayPluginManager) -> None:
    # pluggy's load_setuptools_entrypoints would do, but its import errors do not name the plugin.
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != hookspecs.PROJECT or pm.is_blocked(ep.name):
                continue
            if pm.has_plugin(ep.name):
                first = pm.distributions[ep.name][0]
                if first != dist.metadata["name"]:
                    raise PluginError(
                        f"entry point {ep.name!r} is declared by both {first} and {dist.metadata['name']}; "
                        f"uninstall one, or block it with {DISABLE_ENV}={ep.name} and rename the other"
                    )
                continue  # the same distribution seen twice on sys.path
            try:
                plugin = ep.load()
            except Exception as exc:  # any import-time failure of third-party code
                raise PluginError(
                    f"plugin {ep.name!r} ({ep.value}, from {dist.metadata['name']} "
                    f"{dist.version}) failed to load: {type(exc).__name__}: {exc}"
                ) from exc
            pm.register(plugin, name=ep.name)
            pm.distributions[ep.name] = (dist.metadata["name"], dist.version)


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin, as ``savegress-gw plugins`` lists it."""

    kind: str
    name: str
    component: str
    entry_point: str
    distribution: str
    version: str


class Registry:
    """Component classes by kind and name, as registered through ``gw_register_components``."""

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[str, type[Component]]] = {kind: {} for kind in KIND_BASES}
        self.origin: dict[type[Component], str] = {}

    def register(self, cls: type[Component], origin: str = "?") -> None:
        """Add ``cls``; raise :class:`PluginError` if it is malformed or its name is taken."""
        kind = getattr(cls, "kind", None)
        if not (isinstance(cls, type) and issubclass(cls, Component)) or kind not in KIND_BASES:
            raise PluginError(f"{origin}: {cls!r} is not a subclass of one of the component kinds")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{origin}: {cls.__qualname__} has no `name`")
        if not issubclass(cls.Config, ComponentConfig):
            raise PluginError(f"{origin}: {cls.__qualname__}.Config must subclass ComponentConfig")
        taken = self.by_kind[kind].get(name)
        if taken is not None:
            raise PluginError(
                f"{kind} {name!r} is registered twice: {_qualname(taken)} ({self.origin[taken]}) and "
                f"{_qualname(cls)} ({origin}); block one with {DISABLE_ENV}"
            )
        self.by_kind[kind][name] = cls
        self.origin[cls] = origin

    def get(self, kind: str, name: str) -> type[Component] | None:
        return self.by_kind[kind].get(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self.by_kind[kind])


def collect_components(pm: pluggy.PluginManager) -> Registry:
    """Call every plugin's ``gw_register_components`` and return what they registered."""
    registry = Registry()
    for impl in pm.hook.gw_register_components.get_hookimpls():
        origin = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            impl.function(register=lambda cls, _origin=origin: registry.register(cls, _origin))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {origin!r} failed to register its components: {exc}") from exc
    return registry


def load_registry(*, modules: Iterable[ModuleType] | None = None) -> Registry:
    """Plugin manager and component registry in one call (what every process does at start)."""
    return collect_components(get_plugin_manager(modules=modules))


def list_plugins(pm: GatewayPluginManager, registry: Registry) -> list[PluginInfo]:
    """Every registered component with the plugin and distribution that provided it."""
    rows = []
    for kind, by_name in registry.by_kind.items():
        for name, cls in sorted(by_name.items()):
            origin = registry.origin[cls]
            dist, version = pm.distributions.get(origin, ("-", "-"))
            rows.append(PluginInfo(kind, name, _qualname(cls), origin, dist, version))
    return rows


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
