"""Profile sections of database change capture: ``snapshot`` (the initial load, and periodic state
snapshots) and ``schema``.

They configure the PostgreSQL source (``source.type: postgres``); other sources ignore them.
Keys of the configuration surface that are not built are refused with ``not implemented yet``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from savegress_gw.profile.settings import Section, not_yet
from savegress_gw.units import Duration

SchemaApprovalLater = not_yet("the schema approval workflow and notifications")
SchemaCacheLater = not_yet("schema cache expiry; the relation cache follows the stream's relation messages")


class SnapshotSettings(Section):
    """The initial snapshot, read when the source starts without a checkpoint (``SNAPSHOT`` events)."""

    enabled: bool = True
    """Read the selected tables' existing rows before streaming changes (first run only)."""
    exit_after: bool = False
    """Stop the gateway once the snapshot is delivered (migration mode); the next start streams."""
    parallel_workers: int = Field(1, ge=1, le=64)
    """Snapshot readers: connections inside the slot's exported snapshot, each taking the next
    pending table when free (so up to this many tables are read at once). One reader runs in the
    source process; several (this many, at most one per table to read) are each a process of
    their own that converts and encodes its rows beside the source process (docs/postgres.md)."""
    batch_size: int = Field(10_000, ge=1, le=1_000_000)
    """Rows fetched per round trip (and most rows per read batch)."""
    interval: Duration | None = Field(None, gt=0)
    """Periodic state snapshots: with ``enabled``, every ``interval`` the gateway's checkpoint is
    copied to ``dir`` as a snapshot it can be restored from (``savegress-gw snapshot``); unset: none."""
    retention_count: int = Field(24, ge=1)
    """State snapshots kept; the oldest is deleted when a new one is taken."""
    dir: str = "./data/snapshots"
    """Local directory of the state snapshots (one subdirectory per gateway id)."""


class SchemaEvolutionSettings(Section):
    enabled: bool = True
    """Off: schema changes are still emitted as ``DDL`` events, but no policy applies."""
    compatible_changes: Literal["auto", "warn", "error"] = "auto"
    """Added columns and replica identity changes: ``auto`` emit the DDL event, ``warn`` also log a
    warning, ``error`` stop the source with an error."""
    breaking_changes: Literal["warn", "error", "block"] = "warn"
    """Dropped, renamed or retyped columns and renamed tables: ``warn`` emit and log, ``error`` stop
    the source, ``block`` hold the stream before the change until the marker file it names is deleted."""
    notify: SchemaApprovalLater = None
    notify_channels: SchemaApprovalLater = None
    approval_workflow: SchemaApprovalLater = None
    approval_timeout: SchemaApprovalLater = None
    approvers: SchemaApprovalLater = None


class SchemaSettings(Section):
    detection: Literal["none", "basic", "auto"] = "auto"
    """``none``: relation changes are applied silently (no ``DDL`` events); ``basic``/``auto``: detected."""
    cache_ttl: SchemaCacheLater = None
    evolution: SchemaEvolutionSettings = SchemaEvolutionSettings()
