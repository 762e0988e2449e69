"""Profile sections of recovery: ``pitr`` (the archive of delivered events) and ``storage`` (where
state snapshots and archive segments are backed up).

``pitr: {enabled: true, retention: 7d, granularity: 1m, storage_dir: ...}`` and
``storage: {backend: s3, s3: {bucket, region, access_key, secret_key, prefix, sync_interval}}``
(``spec/reference.md`` 4.5). How they work: docs/recovery.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from savegress_gw.profile.settings import Section, not_yet
from savegress_gw.units import Duration, Size

CompactionLater = not_yet("storage compaction: archive segments are kept whole until their retention ends")


class PitrSettings(Section):
    """Point-in-time recovery: every worker archives the events it delivered, in segments of
    ``granularity``, so ``savegress-gw pitr replay --from <time>`` can send them again."""

    enabled: bool = False
    """Archive delivered events."""
    retention: Duration = Field(7 * 86400.0, gt=0)
    """Sealed segments older than this are deleted (locally, and from ``storage`` on its next sync)."""
    granularity: Duration = Field(60.0, ge=1.0)
    """Length of one archive segment: a replay starts at the beginning of the segment holding its
    ``--from`` time."""
    storage_dir: str = "./data/pitr"
    """Local directory of the archive (one subdirectory per gateway id)."""
    segment_size: Size = Field(1 << 30, ge=1 << 20)
    """A segment is sealed early when it reaches this many bytes (before compression)."""


class S3Settings(Section):
    bucket: str = "savegress-backup"
    region: str = "us-east-1"
    access_key: str | None = None
    """Default: the AWS credential chain (environment, shared files, instance role)."""
    secret_key: str | None = None
    prefix: str = "cdc/"
    """Key prefix of every object; the gateway id follows it."""
    sync_interval: Duration = Field(300.0, gt=0)
    """How often new snapshots and sealed segments are uploaded and expired ones deleted."""
    endpoint: str | None = None
    """URL of an S3-compatible service (MinIO, Ceph); default: AWS."""


class LocalStorageSettings(Section):
    path: str = "./data/backup"
    """Directory the backups are copied to (a mounted backup volume, NFS)."""
    sync_interval: Duration = Field(300.0, gt=0)


class StorageSettings(Section):
    """Where state snapshots and sealed archive segments are backed up."""

    backend: Literal["none", "local", "s3", "gcs", "azure"] = "none"
    """``none`` (the section being absent): nothing is copied anywhere."""
    local: LocalStorageSettings = LocalStorageSettings()
    s3: S3Settings = S3Settings()
    gcs: dict | None = None
    azure: dict | None = None
    segment_size: Size | None = Field(None, ge=1 << 20)
    """When set, used instead of ``pitr.segment_size``."""
    compaction: CompactionLater = None

    @model_validator(mode="after")
    def _built_backend(self) -> "StorageSettings":
        if self.backend in ("gcs", "azure") or self.gcs or self.azure:
            backend = self.backend if self.backend in ("gcs", "azure") else ("gcs" if self.gcs else "azure")
            raise PydanticCustomError("not_implemented", "not implemented yet ({feature})",
                                      {"feature": f"the {backend} storage backend; use local or s3"})
        return self

    @property
    def sync_interval(self) -> float:
        return self.s3.sync_interval if self.backend == "s3" else self.local.sync_interval
