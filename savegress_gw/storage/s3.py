"""The ``s3`` backend: objects in an S3 bucket (AWS, or an S3-compatible service at ``endpoint``).

Credentials: ``access_key``/``secret_key`` when both are given, else boto3's default chain
(environment, shared files, instance role). The client has bounded timeouts and few retries
(:data:`CONNECT_TIMEOUT_S`, :data:`READ_TIMEOUT_S`, :data:`MAX_ATTEMPTS`), so an unreachable
endpoint fails an operation within seconds; the syncer retries on its next interval. The client
is created on first use (resolving the default chain may probe the instance metadata service)
and dropped after a failure, so credentials that appear later are picked up.

An upload (``upload_file``; multipart above 8 MiB) is atomic: the object appears under its key
only once complete, and a failed multipart upload is aborted. The bucket must exist: it is never
created here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from savegress_gw.profile.recovery import S3Settings
from savegress_gw.durable import write_atomically
from savegress_gw.storage.backend import StorageError, temp_path

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 2
"""Attempts per request in total (botocore ``standard`` retry mode), the first included."""
DELETE_BATCH = 1000
"""Keys per DeleteObjects request (the S3 maximum)."""


class S3Backend:
    """Backups as objects in ``settings.bucket``."""

    name = "s3"

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        where = settings.endpoint or f"AWS {settings.region}"
        self.location = f"s3://{settings.bucket} at {where}"
        self._client: Any = None

    def client(self) -> Any:
        """The boto3 S3 client, created on first use."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                            region_name=self.settings.region)
            credentials: dict[str, str] = {}
            if self.settings.access_key and self.settings.secret_key:
                credentials = {"aws_access_key_id": self.settings.access_key,
                               "aws_secret_access_key": self.settings.secret_key}
            session = boto3.session.Session()
            self._client = session.client("s3", endpoint_url=self.settings.endpoint, config=config, **credentials)
        return self._client

    def _fail(self, operation: str, exc: BaseException) -> StorageError:
        self._client = None  # a fresh client (and credential lookup) on the next attempt
        return StorageError(f"s3 backend {self.location}: {operation}: {type(exc).__name__}: {exc}")

    def list(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        try:
            pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"]] = int(item["Size"])
        except Exception as exc:  # botocore's errors have no common base with the network errors
            raise self._fail(f"list {prefix!r}", exc) from exc
        return found

    def upload(self, path: Path, key: str) -> None:
        from boto3.s3.transfer import TransferConfig

        if not path.is_file():
            raise FileNotFoundError(path)
        try:
            self.client().upload_file(str(path), self.bucket, key,
                                      Config=TransferConfig(max_concurrency=2))
        except FileNotFoundError:
            raise
        except Exception as exc:
            if not path.exists():
                raise FileNotFoundError(path) from exc
            raise self._fail(f"upload {path} to {key}", exc) from exc

    def download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomically(path, temp_path(path), lambda out: self.client().download_fileobj(self.bucket, key, out))
        except Exception as exc:
            raise self._fail(f"download {key} to {path}", exc) from exc

    def delete(self, keys: Iterable[str]) -> None:
        pending = list(keys)
        for start in range(0, len(pending), DELETE_BATCH):
            batch = pending[start:start + DELETE_BATCH]
            try:
                answer = self.client().delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except Exception as exc:
                raise self._fail(f"delete {len(batch)} objects", exc) from exc
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(f"s3 backend {self.location}: delete {first.get('Key')}: "
                                   f"{first.get('Code')}: {first.get('Message')} ({len(errors)} keys failed)")
