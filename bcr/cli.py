"""``bcr <track> <command>``: what each Snakemake rule calls, also usable by hand.

Each track module contributes its sub-commands through ``register(subparsers)``; the modules are
listed in :data:`COMMAND_MODULES` and imported lazily only to build the parser.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable

from bcr.config import ConfigError
from bcr.io import BadFileError

COMMAND_MODULES = [
    "bcr.commands",
    "bcr.ledger.cli",
    "bcr.tiered.cli",
    "bcr.prefix.cli",
    "bcr.serving.cli",
    "bcr.peers.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcr", description=__doc__.splitlines()[0])
    tracks = parser.add_subparsers(dest="track", required=True, metavar="TRACK")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(tracks)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def commands() -> dict[tuple[str, str], Callable]:
    """Every ``(track, command)`` pair of the CLI and the function that handles it."""
    out = {}
    for track, track_parser in _subcommands(build_parser()).items():
        for command, p in _subcommands(track_parser).items():
            out[(track, command)] = p.get_default("func")
    return out


def handler(track: str, command: str) -> Callable:
    """The function ``bcr TRACK COMMAND`` runs (what its rule's rerun hash follows)."""
    known = commands()
    if (track, command) not in known:
        raise KeyError(f"no command `bcr {track} {command}`; known: {sorted(' '.join(k) for k in known)}")
    return known[(track, command)]


# OpenMP threads that spin while waiting make a 2-core machine 10-30x slower as soon as a second
# process competes for the cores (measured: tiny-model TTFT at 1K tokens 1.5 s spinning vs 0.17 s
# passive).  Set by the project's own processes, before torch initialises OpenMP (handlers import
# torch lazily), never on ``import bcr``.
OMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def main(argv: list[str] | None = None) -> int:
    for key, value in OMP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message="Only CUDA")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"bcr: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, BadFileError) as exc:
        print(f"bcr: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
