"""``savegress-gw storage sync -c PROFILE`` and ``savegress-gw storage restore -c PROFILE [--force]``.

``sync`` runs one backup pass now (what the running gateway does every ``sync_interval``), prints
its counts and exits 1 with the error when it fails. ``restore`` is disaster recovery on a new
host: it downloads every backed-up object of the profile's ``gateway.id`` into the local snapshot
and archive directories (``snapshot.dir``/``pitr.storage_dir`` + ``/<gateway id>/``), keeping
local files that exist unless ``--force``. Both need ``storage.backend`` other than ``none``.
``cli.py`` registers the group with :func:`add_storage_commands` and :func:`run_storage_command`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from savegress_gw.cli_options import add_profile_options
from savegress_gw.errors import EXIT_CONFIG_ERROR, EXIT_FAILURE, EXIT_OK
from savegress_gw.plugins import collect_components, get_plugin_manager
from savegress_gw.profile import load_profile
from savegress_gw.storage import StorageError, Syncer, backend_for, roots_for


def add_storage_commands(subparsers: Any) -> None:
    """Add the ``storage`` command group to the top-level ``subparsers`` of ``savegress-gw``."""
    storage = subparsers.add_parser(
        "storage", help="back up snapshots and archive segments now, or restore them",
        description="Work on the backup storage of a profile (storage.backend: local or s3).")
    actions = storage.add_subparsers(dest="storage_action", required=True, metavar="ACTION")
    example = "storage.s3.endpoint=http://minio:9000"

    add_profile_options(actions.add_parser(
        "sync", help="upload new snapshots and sealed segments, delete expired ones (one pass)",
        description="One backup pass now: upload ready files missing or different remotely, delete remote "
                    "objects whose local file retention removed. Exit 1 with the error when it fails."), example)
    restore = add_profile_options(actions.add_parser(
        "restore", help="download every backup of the gateway id into the local directories",
        description="Disaster recovery: download every backed-up snapshot and archive segment of gateway.id "
                    "into snapshot.dir and pitr.storage_dir. Existing local files are kept unless --force."), example)
    restore.add_argument("--force", action="store_true", help="overwrite local files that exist")


def run_storage_command(args: argparse.Namespace) -> int:
    """Run the ``storage`` action in ``args``; return the exit status (ProfileError and PluginError
    propagate to ``cli.main``)."""
    validated = load_profile(args.config, collect_components(get_plugin_manager()), flags=args.set)
    profile = validated.profile
    backend = backend_for(profile.storage)
    if backend is None:
        print("savegress-gw: the profile has no backup storage (storage.backend: none)", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    syncer = Syncer(backend, roots_for(profile))
    try:
        if args.storage_action == "sync":
            return _sync(syncer)
        return _restore(syncer, args.force)
    except StorageError as exc:
        print(f"savegress-gw: {args.storage_action} failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _sync(syncer: Syncer) -> int:
    if not syncer.enabled_roots:
        print("nothing to back up: neither periodic snapshots (snapshot.interval) nor pitr are enabled")
        return EXIT_OK
    result = syncer.sync_once()
    print(f"synced to {syncer.backend.location}: {result.summary()}")
    return EXIT_OK


def _restore(syncer: Syncer, force: bool) -> int:
    result = syncer.restore(force)
    dirs = ", ".join(str(root.local_dir) for root in syncer.roots)
    print(f"restored from {syncer.backend.location} into {dirs}: downloaded {result.downloaded} files "
          f"({result.downloaded_bytes} bytes), kept {result.kept_existing} existing local files"
          + ("" if force else " (--force overwrites them)"))
    for key in result.skipped:
        print(f"skipped {key}: not a file of the backup layout", file=sys.stderr)
    return EXIT_OK
