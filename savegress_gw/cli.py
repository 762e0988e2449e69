"""The ``savegress-gw`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import yaml

from savegress_gw import __version__
from savegress_gw.dlq_cli import add_dlq_commands, run_dlq_command
from savegress_gw.errors import EXIT_CONFIG_ERROR, EXIT_OK, EXIT_WORKER_BOOT_ERROR, PluginError, ProfileError
from savegress_gw.pitr_cli import add_pitr_commands, run_pitr_command
from savegress_gw.plugins import collect_components, get_plugin_manager, list_plugins
from savegress_gw.profile import bundled_profiles, load_profile, profile_schema
from savegress_gw.snapshot_cli import add_snapshot_commands, run_snapshot_command
from savegress_gw.storage_cli import add_storage_commands, run_storage_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="savegress-gw",
        description="Change-data-capture and event gateway: stream changes and events into Kafka and friends.",
    )
    parser.add_argument("--version", action="version", version=f"savegress-gw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_profile(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", action="append", required=True, metavar="FILE",
                       help="profile file or bundled profile name; repeat to merge (later wins)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one key, e.g. --set batching.max_size=500 (applied last)")
        p.add_argument("--workers", type=int, help="shorthand for --set gateway.workers=N")
        p.add_argument("--log-level", choices=["debug", "info", "warn", "error"],
                       help="shorthand for --set logging.level=LEVEL")

    start = commands.add_parser("start", help="run the gateway", description="Run the gateway until SIGTERM/SIGINT.")
    with_profile(start)
    validate = commands.add_parser("validate", help="check profiles and list every problem",
                                   description="Exit 0 when valid, 2 with every problem listed otherwise.")
    with_profile(validate)
    validate.add_argument("--print", action="store_true", help="print the merged, validated profile as YAML")
    commands.add_parser("schema", help="print the JSON Schema of a profile",
                        description="JSON Schema of the whole profile, assembled from the installed plugins.")
    commands.add_parser("plugins", help="list installed plugins",
                        description="Every component with its kind, plugin, distribution and version.")
    checkpoint = commands.add_parser("checkpoint", help="show or reset the stored source position",
                                     description="The source position stored under checkpoint.dir.")
    action = checkpoint.add_subparsers(dest="action", required=True, metavar="ACTION")
    with_profile(action.add_parser("show", help="print the checkpoint", description="Print the checkpoint."))
    with_profile(action.add_parser("reset", help="move the checkpoint aside (the source restarts from its default)",
                                   description="Rename the checkpoint to <file>.bak: the next start begins at "
                                               "the source's default position."))
    profiles = commands.add_parser("profiles", help="bundled profiles", description="The profiles shipped in config/.")
    which = profiles.add_subparsers(dest="action", required=True, metavar="ACTION")
    which.add_parser("list", help="list bundled profiles", description="List bundled profiles.")
    show = which.add_parser("show", help="print one bundled profile", description="Print one bundled profile.")
    show.add_argument("name")
    add_dlq_commands(commands)
    add_snapshot_commands(commands)
    add_pitr_commands(commands)
    add_storage_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PluginError as exc:
        print(f"savegress-gw: plugin error: {exc}", file=sys.stderr)
        return EXIT_WORKER_BOOT_ERROR
    except ProfileError as exc:
        print(f"savegress-gw: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def _flags(args: argparse.Namespace) -> list[str]:
    flags = list(args.set)
    if args.workers is not None:
        flags.append(f"gateway.workers={args.workers}")
    if args.log_level is not None:
        flags.append(f"logging.level={args.log_level}")
    return flags


def _load(args: argparse.Namespace):
    pm = get_plugin_manager()
    registry = collect_components(pm)
    return pm, registry, load_profile(args.config, registry, flags=_flags(args))


def cmd_start(args: argparse.Namespace) -> int:
    from savegress_gw.supervisor import run_gateway

    pm, registry, validated = _load(args)
    return run_gateway(validated, registry, pm,
                       reload=lambda: load_profile(args.config, registry, flags=_flags(args)))


def cmd_validate(args: argparse.Namespace) -> int:
    _, _, validated = _load(args)
    for warning in validated.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.print:
        print(yaml.safe_dump(validated.profile.model_dump(mode="json", by_alias=True, exclude_none=True),
                             sort_keys=False), end="")
    else:
        print("profile is valid")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    registry = collect_components(get_plugin_manager())
    print(json.dumps(profile_schema(registry), indent=2))
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    pm = get_plugin_manager()
    rows = list_plugins(pm, collect_components(pm))
    header = ("KIND", "NAME", "ENTRY POINT", "DISTRIBUTION", "VERSION")
    table = [header] + [(r.kind, r.name, r.entry_point, r.distribution, r.version) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return EXIT_OK


def cmd_profiles(args: argparse.Namespace) -> int:
    profiles = bundled_profiles()
    if args.action == "list":
        for name, path in profiles.items():
            first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines()
                          if line.startswith("#")), "")
            print(f"{name:24} {first}")
        return EXIT_OK
    if args.name not in profiles:
        print(f"savegress-gw: no bundled profile {args.name!r}; available: {', '.join(profiles)}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(profiles[args.name].read_text(), end="")
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from savegress_gw.checkpoint import CheckpointStore

    _, _, validated = _load(args)
    profile = validated.profile
    store = CheckpointStore(profile.checkpoint, profile.gateway.id, profile.source.type)
    if not store.path.exists():
        print(f"no checkpoint at {store.path}")
        return EXIT_OK
    if args.action == "show":
        print(f"{store.path}: {store.path.read_text()}")
        return EXIT_OK
    backup = store.path.with_name(store.path.name + ".bak")
    store.path.replace(backup)
    print(f"moved {store.path} to {backup}; the next start begins at the source's default position")
    return EXIT_OK


COMMANDS = {"checkpoint": cmd_checkpoint, "dlq": run_dlq_command, "pitr": run_pitr_command, "plugins": cmd_plugins,
            "profiles": cmd_profiles, "schema": cmd_schema, "snapshot": run_snapshot_command,
            "start": cmd_start, "storage": run_storage_command, "validate": cmd_validate}
