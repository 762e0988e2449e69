"""Checkpoints: the last source position whose events were all delivered or parked.

A file store writes ``<checkpoint.dir>/<gateway id>.json`` atomically (write a temporary file,
fsync it with ``sync_mode: sync``, rename over the old one); a crash leaves either the old or the
new checkpoint, never a torn one. A checkpoint that cannot be parsed stops the gateway with an
error naming the file and how to reset it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from savegress_gw.durable import fsync_directory
from savegress_gw.errors import GatewayError
from savegress_gw.profile.settings import CheckpointSettings


class CheckpointError(GatewayError):
    """The stored checkpoint is unreadable; the message says which file and how to reset."""


def checkpoint_path(settings: CheckpointSettings, gateway_id: str) -> Path:
    """Where the file store keeps gateway ``gateway_id``'s checkpoint."""
    return Path(settings.directory) / f"{gateway_id}.json"


class CheckpointStore:
    """Load and save the source position of one gateway."""

    def __init__(self, settings: CheckpointSettings, gateway_id: str, source_type: str,
                 resumable: bool = True) -> None:
        """``resumable=False`` (a source without ``seek``, e.g. HTTP ingest) stores nothing."""
        self.settings = settings
        self.enabled = settings.enabled and resumable
        self.source_type = source_type
        self.path = checkpoint_path(settings, gateway_id)
        self._memory: dict[str, Any] | None = None
        self.saved_at = time.monotonic()

    @property
    def durable(self) -> bool:
        return self.enabled and self.settings.type == "file"

    def load(self) -> Any:
        """The stored position, or None when there is none (or checkpoints are off)."""
        if not self.enabled:
            return None
        if not self.durable:
            return (self._memory or {}).get("position")
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"failed to load checkpoint {self.path}: {exc}; to start over from the source's default "
                f"position, move it away (mv {self.path} {self.path}.bak) or run `savegress-gw checkpoint reset -c <profile>`"
            ) from None
        if not isinstance(data, dict) or "position" not in data:
            raise CheckpointError(f"checkpoint file corrupted: {self.path} has no position; move it away to reset")
        if data.get("source") != self.source_type:
            raise CheckpointError(
                f"checkpoint {self.path} belongs to a {data.get('source')!r} source, not {self.source_type!r}; "
                f"use another gateway.id or move the file away"
            )
        return data["position"]

    def save(self, position: Any) -> dict[str, Any]:
        """Store ``position`` atomically (and durably with ``sync_mode: sync``); return the record
        stored (``source``, ``position``, ``updated_at``), as the file holds it."""
        self.saved_at = time.monotonic()
        record = {"source": self.source_type, "position": position,
                  "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if not self.enabled:
            return record
        if not self.durable:
            self._memory = record
            return record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        with open(tmp, "w") as handle:
            json.dump(record, handle)
            if self.settings.sync_mode == "sync":
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        if self.settings.sync_mode == "sync":
            fsync_directory(self.path.parent)
        return record

    def due(self, now: float) -> bool:
        return now - self.saved_at >= self.settings.interval
