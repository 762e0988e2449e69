"""The plugin contract of savegress-gw: every hook a plugin may implement.

The pluggy project name and the entry-point group are both ``savegress_gw``. Built-in plugins and
third-party packages are loaded by the same route: an entry point named ``<kind>.<name>`` in group
``savegress_gw`` whose module implements :func:`gw_register_components`.

Hooks assemble the gateway and follow its lifecycle; none is called per event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from savegress_gw.components import Component
    from savegress_gw.worker import WorkerInfo

PROJECT = "savegress_gw"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def gw_register_components(register: Callable[[type["Component"]], None]) -> None:
    """Register component classes by calling ``register(cls)`` once per class.

    Called once per process (the supervisor, the source process and every worker) before the
    profile is validated, so the profile schema includes every registered component's ``Config``.
    Registering a second class with the same kind and name is an error naming both classes;
    to replace a built-in, block it (``SAVEGRESS_GW_DISABLE_PLUGINS=sink.file``).

    :param register: Callable that takes a :class:`~savegress_gw.components.Component` subclass.
    """


@hookspec
def gw_worker_started(worker: "WorkerInfo") -> None:
    """In a worker process: its components are open and the first batch is about to be read.

    :param worker: The worker's index, process id and profile name.
    """


@hookspec
def gw_worker_stopping(worker: "WorkerInfo") -> None:
    """In a worker process: the last batch has settled and components are about to close.

    :param worker: The worker's index, process id and profile name.
    """


@hookspec
def gw_worker_exited(worker: "WorkerInfo", exitcode: int) -> None:
    """In the supervisor: a worker process was reaped.

    :param worker: The worker's index, process id and profile name.
    :param exitcode: The process exit code (negative: killed by that signal number).
    """
