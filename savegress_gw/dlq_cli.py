"""``savegress-gw dlq list | show ID | replay [--id ID ...] | purge --older-than 7d``.

Works on the profile's dead-letter queue (``-c FILE``): the file queue's directory
(``dlq.base_dir``, or ``--dir DIR`` without a profile) or the Kafka dead-letter topic
(``dlq.type: kafka``; :mod:`savegress_gw.deadletter.topic` says how entries are removed there).
``replay`` runs the gateway of the profile with its source replaced by ``dlq_replay`` (see
:func:`replay_profile`): replayed events are removed from the queue once delivered, and events
that fail again are parked again as new entries. ``cli.py`` registers the group with
:func:`add_dlq_commands` and :func:`run_dlq_command`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from savegress_gw.deadletter import DEFAULT_BASE_DIR, QUEUE_TYPE, DeadLetter, DeadLetterStore
from savegress_gw.deadletter.stores import EntryStore, check_entry_id, profile_store
from savegress_gw.errors import EXIT_CONFIG_ERROR, EXIT_FAILURE, EXIT_OK, GatewayError
from savegress_gw.plugins import Registry, collect_components, get_plugin_manager
from savegress_gw.profile import profile_schema, resolve_profile_path
from savegress_gw.profile.loader import deep_merge, known_key_paths, load_raw
from savegress_gw.profile.model import SECTION_BY_KEY, validate_profile
from savegress_gw.side_runs import side_run
from savegress_gw.units import format_duration, parse_duration

REASON_WIDTH = 60
"""``dlq list`` cuts reasons to this many characters."""


class DlqCommandError(Exception):
    """A ``dlq`` command cannot run as asked; the message says why and what to pass instead."""


def add_dlq_commands(subparsers: Any) -> None:
    """Add the ``dlq`` command group to the top-level ``subparsers`` of ``savegress-gw``."""
    dlq = subparsers.add_parser(
        "dlq", help="list, show, replay and purge dead-lettered events",
        description="Work on the dead-letter queue of a profile (-c): a file queue's directory (or --dir) or a "
                    "Kafka dead-letter topic (dlq.type: kafka).")
    actions = dlq.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")

    def located(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("-c", "--config", action="append", default=[], metavar="FILE",
                            help="profile file or bundled profile name (repeat to merge); gives the dlq section")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override one profile key, e.g. --set dlq.base_dir=/var/lib/savegress/dlq")
        parser.add_argument("--dir", metavar="DIR", help="the dead-letter directory (instead of dlq.base_dir)")
        return parser

    located(actions.add_parser("list", help="list parked events",
                               description="One line per parked event: id, time, table, operation, attempts, reason."))
    show = located(actions.add_parser("show", help="print one parked event as JSON",
                                      description="Every stored field of one entry, with the event itself."))
    show.add_argument("id", help="entry id, as `dlq list` prints it (dlq-00000001:0; p0:12 on Kafka)")
    replay = located(actions.add_parser(
        "replay", help="send parked events through the profile's output again",
        description="Run the gateway of the profile (-c, required) with source dlq_replay: each event is removed "
                    "from the dead-letter queue once delivered; events that fail again are parked again."))
    replay.add_argument("--id", dest="ids", action="append", default=[], metavar="ID",
                        help="replay only this entry (repeatable); default: every entry")
    purge = located(actions.add_parser("purge", help="remove parked events older than a duration",
                                       description="Remove every entry parked longer ago than --older-than."))
    purge.add_argument("--older-than", required=True, type=_duration, metavar="DURATION",
                       help="e.g. 7d, 12h, 30m")


def run_dlq_command(args: argparse.Namespace) -> int:
    """Run the ``dlq`` action in ``args``; return the exit status.

    ProfileError and PluginError propagate (``cli.main`` reports them like for ``start``).
    """
    try:
        if args.dlq_action == "replay":
            return _replay(args)
        store = _store(args)
        if args.dlq_action == "list":
            return _list(store)
        if args.dlq_action == "show":
            return _show(store, args.id)
        return _purge(store, args.older_than)
    except DlqCommandError as exc:
        print(f"savegress-gw: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except GatewayError as exc:  # the queue cannot be read or changed (a Kafka cluster away, a refused write)
        print(f"savegress-gw: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def queue_type(data: dict[str, Any]) -> str:
    """``dlq.type`` of the (unvalidated) profile ``data``, with the default for its output.

    Raises DlqCommandError when the profile has no dead-letter queue.
    """
    if "dlq" not in data:
        raise DlqCommandError("the profile has no dlq section, so no dead-letter queue; give --dir DIR")
    section = data["dlq"] or {}
    if not isinstance(section, dict):
        raise DlqCommandError("dlq: expected a mapping")
    if section.get("enabled") is False:
        raise DlqCommandError("the profile switches the dead-letter queue off (dlq.enabled: false); give --dir DIR")
    return str(section.get("type", SECTION_BY_KEY["dlq"].default_for(data)))


def dlq_directory(data: dict[str, Any]) -> str:
    """``dlq.base_dir`` of the (unvalidated) profile ``data``, with the file queue's default.

    Raises DlqCommandError when the profile has no dead-letter queue or another kind.
    """
    kind = queue_type(data)
    if kind != QUEUE_TYPE:
        raise DlqCommandError(f"dlq.type is {kind!r}, not a file queue: it has no directory")
    return str((data["dlq"] or {}).get("base_dir", DEFAULT_BASE_DIR))


def replay_profile(data: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """The profile data that replays the dead-letter queue of ``data`` through its output.

    ``source`` becomes ``{type: dlq_replay, base_dir: <dlq.base_dir>, ids}`` for a file queue and
    ``{type: dlq_replay, ids}`` (the profile's own queue) for another; it runs as a side run
    (:func:`~savegress_gw.side_runs.side_run`, ``gateway.id`` + ``-dlq-replay``), so failures are
    parked again in the same queue. The queue is no source that can be replayed in order from a
    position, so a replay is at least once (an entry is removed only after its event was
    delivered; a crash in between delivers it again at the next replay).
    """
    source: dict[str, Any] = {"type": "dlq_replay"}
    if queue_type(data) == QUEUE_TYPE:
        source["base_dir"] = dlq_directory(data)
    if ids:
        source["ids"] = list(ids)
    return side_run(data, source, "-dlq-replay")


# ---------------------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _profile_data(args: argparse.Namespace, registry: Registry) -> dict[str, Any]:
    """The merged profile of ``-c``/``--set`` (environment overrides included), not validated."""
    files = [resolve_profile_path(p) for p in args.config]
    data, _ = load_raw(files, flags=args.set, known_paths=known_key_paths(profile_schema(registry)))
    if args.dir:
        data = deep_merge(data, {"dlq": {"base_dir": args.dir}})
    return data


def _store(args: argparse.Namespace) -> EntryStore:
    """The queue of ``--dir``, or of the profile: a file queue's directory straight from the
    profile data, any other kind through its validated profile and plugin."""
    if args.dir:
        return DeadLetterStore(args.dir)
    if not args.config:
        raise DlqCommandError("say which dead-letter queue: -c FILE (the profile) or --dir DIR")
    registry = collect_components(get_plugin_manager())
    data = _profile_data(args, registry)
    if queue_type(data) == QUEUE_TYPE:
        return DeadLetterStore(dlq_directory(data))
    return profile_store(validate_profile(data, registry).profile, registry)


def _list(store: EntryStore) -> int:
    rows = [(e.id, e.last_failed_at[:19] + "Z", _table(e), e.operation, str(e.attempts), _short(e.reason))
            for e in store.entries()]
    if rows:
        table = [("ID", "PARKED AT", "TABLE", "OPERATION", "ATTEMPTS", "REASON"), *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'} in {store.location}")
    if store.corrupt:
        print(f"savegress-gw: skipped {store.corrupt} corrupt record(s); the log names file and offset",
              file=sys.stderr)
    return EXIT_OK


def _show(store: EntryStore, entry_id: str) -> int:
    try:
        entry = store.get(entry_id)
    except ValueError as exc:
        print(f"savegress-gw: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyError:
        print(f"savegress-gw: no entry {entry_id} in {store.location} (removed, replayed or evicted?)",
              file=sys.stderr)
        return EXIT_FAILURE
    print(orjson.dumps(entry.to_dict(), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def _purge(store: EntryStore, older_than: float) -> int:
    removed = store.purge(older_than)
    print(f"purged {removed} entr{'y' if removed == 1 else 'ies'} older than {format_duration(older_than)} "
          f"from {store.location}")
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from savegress_gw.supervisor import run_gateway

    if not args.config:
        raise DlqCommandError("dlq replay needs the profile (-c FILE): its output is where the events go")
    for entry_id in args.ids:
        try:
            check_entry_id(entry_id)
        except ValueError as exc:
            raise DlqCommandError(str(exc)) from None
    pm = get_plugin_manager()
    registry = collect_components(pm)
    data = replay_profile(_profile_data(args, registry), args.ids)
    validated = validate_profile(data, registry)
    status = run_gateway(validated, registry, pm)
    store = DeadLetterStore(data["source"]["base_dir"]) if "base_dir" in data["source"] \
        else profile_store(validated.profile, registry)
    print(f"replay finished (exit status {status}); {store.count()} entries left in {store.location}")
    return status


def _table(entry: DeadLetter) -> str:
    return f"{entry.schema}.{entry.table}" if entry.schema else entry.table


def _short(reason: str) -> str:
    line = " ".join(reason.split())
    return line if len(line) <= REASON_WIDTH else line[:REASON_WIDTH - 1] + "…"
