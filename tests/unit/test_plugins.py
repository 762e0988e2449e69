"""Plugin loading: explicit modules, entry points, blocking, duplicates, bad plugins, listing."""

from __future__ import annotations

import importlib.metadata
import os
import textwrap
import types
import uuid
from pathlib import Path

import pytest

from savegress_gw import Component, ComponentConfig, Sink, hookimpl
from savegress_gw.errors import PluginError
from savegress_gw.plugins import (
    DISABLE_ENV,
    Registry,
    blocked_plugins,
    collect_components,
    get_plugin_manager,
    list_plugins,
    load_registry,
)
from savegress_gw_plugins.compressors import lz4, zstd
from savegress_gw_plugins.sinks import stdout
from savegress_gw_plugins.sinks.stdout import StdoutSink

VERSION = importlib.metadata.version("savegress-gw")


def plugin_module(name: str, **attributes: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def registering(*classes: type) -> types.ModuleType:
    @hookimpl
    def gw_register_components(register):
        for cls in classes:
            register(cls)

    return plugin_module(f"test_plugin_{uuid.uuid4().hex[:8]}", gw_register_components=gw_register_components)


def block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Block ``names`` in addition to whatever the environment already blocks."""
    monkeypatch.setenv(DISABLE_ENV, ",".join(filter(None, [os.environ.get(DISABLE_ENV, ""), *names])))


def fake_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """An installed distribution in ``root`` (a sys.path entry) with entry points in group savegress_gw."""
    info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(
        "[savegress_gw]\n" + "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    )
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


# ------------------------------------------------------------------------------- explicit modules


def test_modules_give_exactly_those_plugins() -> None:
    pm = get_plugin_manager(modules=[lz4, stdout])
    registry = collect_components(pm)
    assert registry.names("compressor") == ["lz4"]
    assert registry.names("sink") == ["stdout"]
    assert registry.names("source") == registry.names("limiter") == []
    assert registry.get("sink", "stdout") is StdoutSink
    assert registry.get("sink", "file") is None
    assert registry.origin[StdoutSink] == stdout.__name__


def test_blocking_removes_a_built_in(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "zstd" in load_registry().names("compressor")
    block(monkeypatch, "compressor.zstd")
    assert "compressor.zstd" in blocked_plugins()
    registry = load_registry()
    assert "zstd" not in registry.names("compressor")
    assert {"lz4", "none", "hybrid"} <= set(registry.names("compressor"))


def test_blocked_plugins_parses_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, " sink.file, ,compressor.zstd,")
    assert blocked_plugins() == ["sink.file", "compressor.zstd"]
    monkeypatch.delenv(DISABLE_ENV)
    assert blocked_plugins() == []


# ------------------------------------------------------------------------------------ registration


class OtherStdoutSink(Sink):
    name = "stdout"

    def send(self, batch, done):  # pragma: no cover - never sent to
        raise NotImplementedError


def test_duplicate_registration_names_both_classes() -> None:
    with pytest.raises(PluginError) as info:
        load_registry(modules=[stdout, registering(OtherStdoutSink)])
    message = str(info.value)
    assert "sink 'stdout' is registered twice" in message
    assert "savegress_gw_plugins.sinks.stdout.StdoutSink" in message
    assert f"{__name__}.OtherStdoutSink" in message
    assert DISABLE_ENV in message


def test_unknown_hook_fails_check_pending() -> None:
    @hookimpl
    def gw_bogus(register):  # pragma: no cover - never called
        pass

    with pytest.raises(PluginError, match="unknown hook") as info:
        get_plugin_manager(modules=[plugin_module("bogus_plugin", gw_bogus=gw_bogus)])
    assert "gw_bogus" in str(info.value)
    assert "bogus_plugin" in str(info.value)


class NoNameSink(Sink):
    def send(self, batch, done):  # pragma: no cover
        raise NotImplementedError


class BadConfig:
    pass


class BadConfigSink(Sink):
    name = "bad_config"
    Config = BadConfig  # type: ignore[assignment]

    def send(self, batch, done):  # pragma: no cover
        raise NotImplementedError


class KindlessComponent(Component):
    kind = "widget"
    name = "widget"


@pytest.mark.parametrize(
    ("thing", "message"),
    [
        (int, "is not a subclass of one of the component kinds"),
        (object(), "is not a subclass of one of the component kinds"),
        (ComponentConfig, "is not a subclass of one of the component kinds"),
        (KindlessComponent, "is not a subclass of one of the component kinds"),
        (NoNameSink, "NoNameSink has no `name`"),
    ],
)
def test_registering_a_non_component_raises(thing: object, message: str) -> None:
    module = registering(thing)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match=message) as info:
        load_registry(modules=[module])
    assert module.__name__ in str(info.value)  # names the plugin


def test_config_must_be_a_component_config() -> None:
    with pytest.raises(PluginError, match=r"BadConfigSink.Config must subclass ComponentConfig"):
        Registry().register(BadConfigSink, "here")  # type: ignore[arg-type]


def test_a_plugin_failing_inside_its_hook_is_named() -> None:
    @hookimpl
    def gw_register_components(register):
        raise RuntimeError("boom")

    module = plugin_module("exploding_plugin", gw_register_components=gw_register_components)
    with pytest.raises(PluginError, match="plugin 'exploding_plugin' failed to register its components: boom"):
        load_registry(modules=[module])


# ------------------------------------------------------------------------------------- entry points


def test_list_plugins_shows_distribution_and_version_of_built_ins() -> None:
    pm = get_plugin_manager()
    rows = list_plugins(pm, collect_components(pm))
    by_key = {(r.kind, r.name): r for r in rows}
    for kind, name in [("compressor", "zstd"), ("compressor", "lz4"), ("sink", "stdout"), ("source", "http"),
                       ("limiter", "token_bucket"), ("backpressure", "pause")]:
        row = by_key[(kind, name)]
        assert row.entry_point == f"{kind}.{name}"
        assert (row.distribution, row.version) == ("savegress-gw", VERSION)
    assert by_key[("sink", "stdout")].component == "savegress_gw_plugins.sinks.stdout.StdoutSink"
    # explicit modules have no distribution
    module_rows = list_plugins(get_plugin_manager(modules=[zstd]), load_registry(modules=[zstd]))
    assert [(r.name, r.distribution, r.version) for r in module_rows] == [("zstd", "-", "-")]


def test_third_party_entry_point_is_loaded_and_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"gw_echo_{uuid.uuid4().hex[:8]}"
    fake_distribution(tmp_path, "gw-echo-plugin", {"sink.echo": module}, {module: """
        from savegress_gw import Outcome, Sink, Status, hookimpl

        class EchoSink(Sink):
            name = "echo"

            def send(self, batch, done):
                done(Outcome(Status.DELIVERED))

        @hookimpl
        def gw_register_components(register):
            register(EchoSink)
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = get_plugin_manager()
    registry = collect_components(pm)
    assert "echo" in registry.names("sink")
    (row,) = [r for r in list_plugins(pm, registry) if r.name == "echo"]
    assert (row.kind, row.entry_point) == ("sink", "sink.echo")
    assert (row.distribution, row.version) == ("gw-echo-plugin", "1.2.3")
    assert row.component == f"{module}.EchoSink"


def test_broken_entry_point_names_plugin_and_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = f"gw_missing_{uuid.uuid4().hex[:8]}"
    fake_distribution(tmp_path, "gw-broken-plugin", {"sink.broken": missing}, {})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    message = str(info.value)
    assert "plugin 'sink.broken'" in message
    assert "gw-broken-plugin 1.2.3" in message
    assert "ModuleNotFoundError" in message
    block(monkeypatch, "sink.broken")
    assert "stdout" in load_registry().names("sink")  # blocked: never imported


def test_third_party_replaces_a_blocked_built_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"gw_stdout_{uuid.uuid4().hex[:8]}"
    fake_distribution(tmp_path, "gw-better-stdout", {"sink.better_stdout": module}, {module: """
        from savegress_gw import Outcome, Sink, Status, hookimpl

        class BetterStdoutSink(Sink):
            name = "stdout"

            def send(self, batch, done):
                done(Outcome(Status.DELIVERED))

        @hookimpl
        def gw_register_components(register):
            register(BetterStdoutSink)
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="sink 'stdout' is registered twice"):
        load_registry()
    block(monkeypatch, "sink.stdout")
    assert load_registry().get("sink", "stdout").__name__ == "BetterStdoutSink"


def test_same_entry_point_name_from_two_distributions_is_an_error(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"gw_shadow_{uuid.uuid4().hex[:8]}"
    fake_distribution(tmp_path, "gw-shadow", {"sink.stdout": module}, {module: """
        from savegress_gw import Outcome, Sink, Status, hookimpl

        class ShadowSink(Sink):
            name = "shadow"

            def send(self, batch, done):
                done(Outcome(Status.DELIVERED))

        @hookimpl
        def gw_register_components(register):
            register(ShadowSink)
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="sink.stdout") as info:
        load_registry()
    assert "gw-shadow" in str(info.value) and "savegress-gw" in str(info.value)
