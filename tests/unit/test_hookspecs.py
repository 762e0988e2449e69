"""The hook contract: documented hookspecs, and gw_register_components as a plugin uses it.

gw_worker_started / gw_worker_stopping / gw_worker_exited are exercised by the process tests.
"""

from __future__ import annotations

import inspect
import re
import sys

import pytest

from savegress_gw import ComponentConfig, Outcome, Sink, Status, hookimpl, hookspecs
from savegress_gw.plugins import collect_components, get_plugin_manager
from savegress_gw.profile.model import validate_profile

SPECS = [
    fn for name, fn in vars(hookspecs).items()
    if callable(fn) and getattr(fn, f"{hookspecs.PROJECT}_spec", None) is not None
]


def test_the_contract_has_the_documented_hooks() -> None:
    assert sorted(fn.__name__ for fn in SPECS) == [
        "gw_register_components", "gw_worker_exited", "gw_worker_started", "gw_worker_stopping",
    ]
    assert hookspecs.PROJECT == "savegress_gw"


@pytest.mark.parametrize("spec", SPECS, ids=lambda fn: fn.__name__)
def test_hookspec_documents_every_argument(spec) -> None:
    doc = inspect.getdoc(spec)
    assert doc, f"{spec.__name__} has no docstring"
    summary = doc.splitlines()[0]
    assert summary.strip() and not summary.startswith(":param"), "the docstring starts with a summary line"
    arguments = list(inspect.signature(spec).parameters)
    assert arguments, spec.__name__
    documented = re.findall(r"^:param (\w+):\s*\S", doc, re.M)
    assert documented == arguments, f"{spec.__name__}: documented {documented}, arguments {arguments}"


# A module-level test plugin: this module itself implements gw_register_components.


class RecordingSink(Sink):
    """Delivers everything and remembers the batches (a test double registered by this module)."""

    name = "recording"

    class Config(ComponentConfig):
        label: str = "default"
        """A value to see in the validated profile."""

    def send(self, batch, done) -> None:
        done(Outcome(Status.DELIVERED))


@hookimpl
def gw_register_components(register) -> None:
    register(RecordingSink)


def test_hook_gw_register_components() -> None:
    this_module = sys.modules[__name__]
    pm = get_plugin_manager(modules=[this_module])
    assert pm.hook.gw_register_components.get_hookimpls()[0].plugin is this_module
    registry = collect_components(pm)
    assert registry.get("sink", "recording") is RecordingSink
    assert registry.origin[RecordingSink] == __name__
    # what was registered is selectable in a profile, with its own Config keys
    profile = validate_profile({"output": {"type": "recording", "label": "mine"}}, registry).profile
    assert (profile.selected("sink"), profile.output.label) == ("recording", "mine")


def test_register_is_called_once_per_plugin() -> None:
    calls = []

    class Recorder:
        @hookimpl
        def gw_register_components(self, register) -> None:
            calls.append(register)
            register(RecordingSink)

    registry = collect_components(get_plugin_manager(modules=[Recorder()]))  # type: ignore[list-item]
    assert len(calls) == 1 and callable(calls[0])
    assert registry.names("sink") == ["recording"]
