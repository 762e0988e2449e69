"""``savegress-gw pitr list | replay --from TIME [--to TIME] [--resume]``.

Works on the point-in-time archive of a profile (``-c FILE``): ``<pitr.storage_dir>/<gateway.id>``.
``list`` prints its segments; ``replay`` runs the gateway of the profile with its source replaced
by ``pitr_replay`` (see :func:`replay_profile`), so the archived events go through the profile's
output again. ``cli.py`` registers the group with :func:`add_pitr_commands` and
:func:`run_pitr_command`.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from savegress_gw.checkpoint import checkpoint_path
from savegress_gw.cli_options import add_profile_options
from savegress_gw.errors import EXIT_CONFIG_ERROR, EXIT_OK
from savegress_gw.pitr.layout import archive_dir, bucket_seconds
from savegress_gw.pitr.reader import Window, segments_of, window
from savegress_gw.plugins import Registry, collect_components, get_plugin_manager
from savegress_gw.profile import load_profile
from savegress_gw.profile.model import validate_profile
from savegress_gw.side_runs import side_run
from savegress_gw.units import format_duration

REPLAY_SUFFIX = "-pitr-replay"
"""Appended to ``gateway.id`` for a replay: its own checkpoint, Kafka client ids and process titles."""


class PitrCommandError(Exception):
    """A ``pitr`` command cannot run as asked; the message says why and what exists instead."""


def add_pitr_commands(subparsers: Any) -> None:
    """Add the ``pitr`` command group to the top-level ``subparsers`` of ``savegress-gw``."""
    pitr = subparsers.add_parser(
        "pitr", help="list the archive of delivered events, replay it from a point in time",
        description="Work on the point-in-time archive of a profile (-c): <pitr.storage_dir>/<gateway.id>.")
    actions = pitr.add_subparsers(dest="pitr_action", required=True, metavar="ACTION")

    example = "pitr.storage_dir=/var/lib/savegress/pitr"
    add_profile_options(actions.add_parser(
        "list", help="list archive segments",
        description="One line per segment: bucket start (UTC), worker, state, bytes."), example)
    replay = add_profile_options(actions.add_parser(
        "replay", help="send archived events through the profile's output again",
        description="Run the gateway of the profile with source pitr_replay: the archived events of every "
                    "segment whose bucket overlaps [--from, --to) are sent again, bucket by bucket."), example)
    replay.add_argument("--from", dest="from_time", required=True, type=_instant, metavar="TIME",
                        help="ISO 8601, e.g. 2026-01-15T10:30:00Z (naive means UTC); the replay starts at the "
                             "beginning of the bucket holding it")
    replay.add_argument("--to", dest="to_time", type=_instant, metavar="TIME",
                        help="replay the buckets that start before this time; default: up to the newest")
    replay.add_argument("--resume", action="store_true",
                        help="continue the previous replay from its checkpoint instead of starting at --from")


def run_pitr_command(args: argparse.Namespace) -> int:
    """Run the ``pitr`` action in ``args``; return the exit status (ProfileError propagates)."""
    try:
        pm = get_plugin_manager()
        registry = collect_components(pm)
        validated = load_profile(args.config, registry, flags=args.set)
        if args.pitr_action == "list":
            return _list(validated.profile)
        return _replay(args, validated.data, validated.profile, registry, pm)
    except PitrCommandError as exc:
        print(f"savegress-gw: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def replay_profile(data: dict[str, Any], gateway_id: str, storage_dir: str, granularity: float,
                   from_time: datetime, to_time: datetime | None) -> dict[str, Any]:
    """The profile data that replays gateway ``gateway_id``'s archive through the output of ``data``.

    ``source`` becomes ``{type: pitr_replay, gateway_id, storage_dir, granularity, from_time,
    to_time}``; it runs as a side run (:func:`~savegress_gw.side_runs.side_run`: ``gateway.id`` +
    ``-pitr-replay``, its own checkpoint file, so the real gateway's checkpoint is never touched)
    with ``pitr`` switched off too (a replay is not archived again).
    """
    source: dict[str, Any] = {"type": "pitr_replay", "gateway_id": gateway_id, "storage_dir": storage_dir,
                              "granularity": granularity, "from_time": from_time.isoformat()}
    if to_time is not None:
        source["to_time"] = to_time.isoformat()
    return side_run(data, source, REPLAY_SUFFIX, off=("pitr",))


# ---------------------------------------------------------------------------------------------


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-01-15T10:30:00Z)") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _iso(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def _describe(held: Window) -> str:
    return f"the archive holds {_iso(held.start)} .. {_iso(held.end)}"


def _archive(settings: Any) -> tuple[Path, list, int]:
    directory = archive_dir(settings.pitr.storage_dir, settings.gateway.id)
    segments = segments_of(directory)
    if not segments:
        state = "" if settings.pitr.enabled else " (pitr.enabled is false in this profile)"
        raise PitrCommandError(f"no archive of gateway {settings.gateway.id!r}: no segments in {directory}{state}")
    return directory, segments, bucket_seconds(settings.pitr.granularity)


def _list(settings: Any) -> int:
    directory, segments, granularity = _archive(settings)
    rows = []
    for segment in segments:
        try:
            size = segment.path.stat().st_size
        except FileNotFoundError:  # sealed or expired meanwhile
            continue
        rows.append((_iso(segment.bucket), str(segment.worker), segment.state, str(size), segment.path.name))
    table = [("BUCKET START", "WORKER", "STATE", "BYTES", "FILE"), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    held = window(segments, granularity)
    assert held is not None
    print(f"{len(rows)} segment{'' if len(rows) == 1 else 's'} in {directory}; {_describe(held)} "
          f"(buckets of {format_duration(granularity)}, retention {format_duration(settings.pitr.retention)})")
    return EXIT_OK


def _check_range(settings: Any, held: Window, start: datetime, end: datetime | None) -> None:
    """Refuse a range outside what is retained or archived, saying what exists."""
    begin, retained_since = start.timestamp(), time.time() - settings.pitr.retention
    if end is not None and end <= start:
        raise PitrCommandError(f"--to {end.isoformat()} must be after --from {start.isoformat()}")
    if begin < retained_since:
        raise PitrCommandError(
            f"--from {start.isoformat()} is outside the retained window: pitr.retention "
            f"{format_duration(settings.pitr.retention)} keeps events since {_iso(retained_since)}; {_describe(held)}")
    if begin >= held.end:
        raise PitrCommandError(f"--from {start.isoformat()} is after everything archived; {_describe(held)}")
    if end is not None and end.timestamp() <= held.start:
        raise PitrCommandError(f"--to {end.isoformat()} is before everything archived; {_describe(held)}")


def _replay(args: argparse.Namespace, data: dict[str, Any], settings: Any, registry: Registry, pm: Any) -> int:
    from savegress_gw.supervisor import run_gateway

    directory, segments, granularity = _archive(settings)
    held = window(segments, granularity)
    assert held is not None
    _check_range(settings, held, args.from_time, args.to_time)
    replay = replay_profile(data, settings.gateway.id, settings.pitr.storage_dir, settings.pitr.granularity,
                            args.from_time, args.to_time)
    validated = validate_profile(replay, registry)
    checkpoint = checkpoint_path(validated.profile.checkpoint, validated.profile.gateway.id)
    if not args.resume and checkpoint.exists():  # a new replay starts at --from, not where the last one ended
        checkpoint.unlink()
    status = run_gateway(validated, registry, pm)
    print(f"replay of {directory} from {args.from_time.isoformat()} finished (exit status {status})")
    return status
