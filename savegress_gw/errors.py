"""Errors that cross module boundaries, and the named exit codes of gateway processes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG_ERROR = 2
"""The profile did not validate (also the exit status of ``savegress-gw validate``)."""
EXIT_WORKER_BOOT_ERROR = 3
"""A child process failed before it could do any work: the supervisor halts instead of crash-looping."""


class GatewayError(Exception):
    """Base class of the gateway's own errors."""


class ProfileError(GatewayError):
    """A profile failed to load or validate. ``problems`` lists every error as ``key.path: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid profile:\n" + "\n".join(f"  - {p}" for p in problems))


class PluginError(GatewayError):
    """A plugin could not be loaded or registered; the message names the plugin."""


class HaltSupervisor(GatewayError):
    """Raised inside the supervisor loop to stop the gateway with ``exit_status`` and ``reason``."""

    def __init__(self, reason: str, exit_status: int = EXIT_FAILURE) -> None:
        self.reason = reason
        self.exit_status = exit_status
        super().__init__(reason)
