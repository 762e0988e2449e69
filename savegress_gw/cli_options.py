"""Command-line options shared by the commands that work on a profile's state."""

from __future__ import annotations

import argparse


def add_profile_options(parser: argparse.ArgumentParser, example: str) -> argparse.ArgumentParser:
    """Give ``parser`` the profile options of ``start``: ``-c FILE`` (required, repeatable, later
    wins) and ``--set KEY=VALUE`` (``example`` shows one in the help). Returns ``parser``."""
    parser.add_argument("-c", "--config", action="append", required=True, metavar="FILE",
                        help="profile file or bundled profile name; repeat to merge (later wins)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one profile key, e.g. --set {example}")
    return parser
