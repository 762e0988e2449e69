"""What the supervisor hands its children, and what every child does first.

Only plain data and shared-memory handles cross the process boundary: the merged profile as a
dict (each child validates it again against its own plugin registry), the ring names, and the
shared arrays for heartbeats, metrics and components. Errors travel back as strings.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from savegress_gw.metrics import MetricsBlock, ProcessMetrics
from savegress_gw.plugins import GatewayPluginManager, Registry, collect_components, get_plugin_manager
from savegress_gw.profile.model import ProfileBase, validate_profile
from savegress_gw.shared import SharedBlock

SOURCE_SLOT = 0
"""Heartbeat and metrics row of the source process; worker ``i`` uses row ``i + 1``."""


RUNNING, SOURCE_STOPPING, SOURCE_DONE = 0, 1, 2
"""The values of :attr:`ChildArgs.stop_phase`."""


@dataclass
class ChildArgs:
    """Everything a child process needs, picklable for the spawn start method."""

    profile_data: dict[str, Any]
    ring_names: list[str]
    heartbeats: Any
    """RawArray of float64: monotonic time of each child's last heartbeat (0 while booting)."""
    metrics: MetricsBlock
    messages: Any
    """A queue of ``(kind, child name, text)`` tuples back to the supervisor."""
    shared: dict[str, SharedBlock] = field(default_factory=dict)
    """Shared blocks by component kind, for components that declare ``shared_slots``."""
    index: int = -1
    parent_pid: int = 0
    stop_phase: Any = None
    """RawValue of the gateway's stop, set by the supervisor: :data:`RUNNING`, then
    :data:`SOURCE_STOPPING` (workers send what they hold at once, since the source process waits
    for its in-flight events), then :data:`SOURCE_DONE` (only then is a draining worker's ring
    final: a SIGTERM to the whole process group reaches workers early)."""
    leader_lease: Any = None
    """RawValue (float64, ``time.monotonic()`` clock, shared by every process of the machine):
    with ``ha.enabled``, the moment until which the cluster has confirmed this node's lead; the
    supervisor extends it after each commit. Workers deliver nothing past it (a frozen or hung
    supervisor can no longer tell them to stop). ``inf`` without HA and while stopping."""


@dataclass
class ChildRuntime:
    """A booted child: its validated profile, registry, metrics row and heartbeat slot."""

    args: ChildArgs
    name: str
    slot: int
    profile: ProfileBase
    registry: Registry
    metrics: ProcessMetrics
    plugins: GatewayPluginManager

    def beat(self, now: float | None = None) -> None:
        """Record that the work loop is alive (called by the loop itself, never by a side thread)."""
        self.args.heartbeats[self.slot] = time.monotonic() if now is None else now

    def orphaned(self) -> bool:
        """True when the supervisor is gone (the child must then stop)."""
        return os.getppid() != self.args.parent_pid

    def report(self, kind: str, text: str) -> None:
        self.args.messages.put((kind, self.name, text))

    def lead_confirmed(self, now: float) -> bool:
        """False once the supervisor's last confirmation of this node's HA lead has expired."""
        return now <= self.args.leader_lease.value


class StopRequest:
    """The SIGTERM handler of a child: records the request; the loop then drains until a deadline."""

    def __init__(self) -> None:
        self.requested = False
        self._deadline: float | None = None
        signal.signal(signal.SIGTERM, self)

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True

    def deadline(self, now: float, grace_s: float) -> float | None:
        """None while running; once stop was requested, ``now + grace_s`` of the first call after it."""
        if self.requested and self._deadline is None:
            self._deadline = now + grace_s
        return self._deadline


def report_boot_error(args: ChildArgs, name: str, exc: BaseException) -> None:
    """Tell the supervisor why this child could not start (it then halts the gateway)."""
    args.messages.put(("boot_error", name, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"))


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path of a work loop.

    Everything loaded at boot is moved to the permanent generation (``gc.freeze``) so collections
    stop rescanning it, and generation 0 is collected every 50,000 allocations instead of 700: the
    loops allocate short-lived event dicts and lists by the thousand, almost none in cycles.
    Measured: the generator source does about twice the events per CPU second.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def die_with_parent(name: str) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so no child outlives the supervisor,
    and name it ``sg-<name>`` (15 bytes at most) for ``ps -o comm``, ``top`` and ``pkill``."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, f"sg-{name}".encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except OSError:  # not Linux: the work loops also check orphaned()
        pass


def boot_child(args: ChildArgs, name: str, slot: int) -> ChildRuntime:
    """Common start of every child: die with the parent, ignore SIGINT, rebuild registry and profile."""
    die_with_parent(name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C hits the whole group; the supervisor decides
    plugins = get_plugin_manager()
    registry = collect_components(plugins)
    profile = validate_profile(args.profile_data, registry).profile
    return ChildRuntime(args, name, slot, profile, registry, args.metrics.row(slot), plugins)
