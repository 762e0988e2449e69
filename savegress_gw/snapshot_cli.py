"""``savegress-gw snapshot list | restore NAME`` -c PROFILE: the gateway's periodic state snapshots.

``list`` prints the snapshots of the profile's gateway (``<snapshot.dir>/<gateway.id>/``, newest
first): name, when it was taken, source type and position. ``restore NAME`` makes a snapshot's
position the gateway's checkpoint: the current checkpoint file is moved to ``<file>.bak``, then
the position is saved through :class:`~savegress_gw.checkpoint.CheckpointStore`, so the next
start resumes after it (run it while the gateway is stopped: a running one overwrites the
checkpoint). It refuses, with exit status 2 and a message saying why, an exactly-once gateway
(its checkpoint topic decides where it resumes), a snapshot of another source type, a name that
does not exist (listing those that do) and a profile whose checkpoints are not files. A
PostgreSQL slot cannot rewind, so for a postgres source it warns what the restore can and cannot
do. ``cli.py`` registers the group with :func:`add_snapshot_commands` and :func:`run_snapshot_command`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from savegress_gw.cli_options import add_profile_options
from savegress_gw.checkpoint import CheckpointStore
from savegress_gw.errors import EXIT_CONFIG_ERROR, EXIT_FAILURE, EXIT_OK
from savegress_gw.exactly_once.checkpoints import checkpoint_topic
from savegress_gw.plugins import collect_components, get_plugin_manager
from savegress_gw.profile import load_profile
from savegress_gw.state_snapshots import SnapshotError, SnapshotNotFound, StateSnapshot, StateSnapshots

POSITION_WIDTH = 80
"""``snapshot list`` cuts positions to this many characters."""

POSTGRES_WARNING = (
    "warning: a PostgreSQL replication slot cannot rewind: the server streams from the later of the restored "
    "position and the slot's confirmed position (confirmed_flush_lsn), without an error, so changes the slot "
    "already confirmed are not delivered again. The gateway confirms what it delivered, so this restore "
    "rewinds at most to where the slot stands now (usually about where the gateway stopped); to send the tables' "
    "rows again, start with a new source.slot_name and no checkpoint: the initial snapshot reads them.")


class SnapshotCommandError(Exception):
    """A ``snapshot`` command refuses to run as asked; the message says why."""


def add_snapshot_commands(subparsers: Any) -> None:
    """Add the ``snapshot`` command group to the top-level ``subparsers`` of ``savegress-gw``."""
    snapshot = subparsers.add_parser(
        "snapshot", help="list and restore periodic state snapshots",
        description="The state snapshots of a profile's gateway (-c): copies of its checkpoint taken every "
                    "snapshot.interval under <snapshot.dir>/<gateway.id>/.")
    actions = snapshot.add_subparsers(dest="snapshot_action", required=True, metavar="ACTION")

    example = "snapshot.dir=/var/lib/savegress/snapshots"
    add_profile_options(actions.add_parser(
        "list", help="list the state snapshots, newest first",
        description="One line per snapshot: name, time taken, source type, position."), example)
    restore = add_profile_options(actions.add_parser(
        "restore", help="make a snapshot's position the checkpoint (gateway stopped)",
        description="Move the checkpoint to <file>.bak and store the snapshot's position as the checkpoint: the "
                    "next start resumes after it. Stop the gateway first."), example)
    restore.add_argument("name", help="snapshot name, as `snapshot list` prints it (e.g. 20260101T120000Z)")


def run_snapshot_command(args: argparse.Namespace) -> int:
    """Run the ``snapshot`` action in ``args``; return the exit status.

    ProfileError and PluginError propagate (``cli.main`` reports them like for ``start``).
    """
    profile = load_profile(args.config, collect_components(get_plugin_manager()), flags=args.set).profile
    snapshots = StateSnapshots(profile.snapshot, profile.gateway.id)
    try:
        if args.snapshot_action == "list":
            return _list(snapshots)
        return _restore(profile, snapshots, args.name)
    except SnapshotCommandError as exc:
        print(f"savegress-gw: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except (SnapshotError, OSError) as exc:
        print(f"savegress-gw: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def restore_refusal(profile: Any, snapshot: StateSnapshot | None = None) -> str | None:
    """Why a snapshot (or any, with ``snapshot`` None) cannot be restored into ``profile``'s
    gateway; None when it can."""
    if profile.exactly_once.enabled:
        return (f"exactly_once is enabled: the checkpoint topic {checkpoint_topic(profile.gateway.id)} decides "
                f"where this gateway resumes, not the checkpoint file, so a state snapshot cannot be restored")
    checkpoint = profile.checkpoint
    if not checkpoint.enabled or checkpoint.type != "file":
        return "the profile keeps no checkpoint file (checkpoint.enabled: false or checkpoint.type: memory)"
    if snapshot is not None and snapshot.source != profile.source.type:
        return (f"snapshot {snapshot.name} holds a position of a {snapshot.source!r} source, but the profile's "
                f"source is {profile.source.type!r}")
    return None


def _list(snapshots: StateSnapshots) -> int:
    rows = []
    for name in snapshots.list():
        try:
            snapshot = snapshots.load(name)
        except SnapshotError as exc:
            rows.append((name, "-", "-", f"(unreadable: {exc})"))
            continue
        rows.append((name, snapshot.taken_at, snapshot.source, _short(json.dumps(snapshot.position))))
    if rows:
        table = [("NAME", "TAKEN AT", "SOURCE", "POSITION"), *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"{len(rows)} state snapshot{'' if len(rows) == 1 else 's'} in {snapshots.directory}")
    if not snapshots.periodic:
        print("note: this profile takes no periodic state snapshots (they need snapshot.enabled and "
              "snapshot.interval)", file=sys.stderr)
    return EXIT_OK


def _restore(profile: Any, snapshots: StateSnapshots, name: str) -> int:
    refusal = restore_refusal(profile)
    if refusal is not None:
        raise SnapshotCommandError(refusal)
    try:
        snapshot = snapshots.load(name)
    except ValueError as exc:
        raise SnapshotCommandError(str(exc)) from None
    except SnapshotNotFound as exc:
        available = ", ".join(exc.available) if exc.available else "none"
        raise SnapshotCommandError(f"{exc}; available: {available}") from None
    refusal = restore_refusal(profile, snapshot)
    if refusal is not None:
        raise SnapshotCommandError(refusal)
    store = CheckpointStore(profile.checkpoint, profile.gateway.id, profile.source.type)
    backup = store.path.with_name(store.path.name + ".bak")
    moved = store.path.exists()
    if moved:
        store.path.replace(backup)
    try:
        store.save(snapshot.position)
    except OSError as exc:
        undo = f"; put the old one back with mv {backup} {store.path}" if moved else ""
        raise SnapshotError(f"failed to write checkpoint {store.path}: {exc}{undo}") from None
    print(f"restored state snapshot {snapshot.name} (taken {snapshot.taken_at}) into {store.path}"
          + (f"; the previous checkpoint is {backup}" if moved else ""))
    print("the next start resumes after the snapshot's position: events after it are delivered again")
    if profile.source.type == "postgres":
        print(POSTGRES_WARNING, file=sys.stderr)
    return EXIT_OK


def _short(text: str) -> str:
    return text if len(text) <= POSITION_WIDTH else text[:POSITION_WIDTH - 1] + "…"
