"""``bcr <track> <command>``: what each Snakemake rule calls, also usable by hand.

Each track module contributes its sub-commands through ``register(subparsers)``; the modules are
listed in :data:`COMMAND_MODULES` and imported lazily only to build the parser.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from bcr.config import ConfigError

COMMAND_MODULES = [
    "bcr.commands",
    "bcr.ledger.cli",
    "bcr.tiered.cli",
    "bcr.prefix.cli",
]


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="Only CUDA")
    parser = argparse.ArgumentParser(prog="bcr", description=__doc__.splitlines()[0])
    tracks = parser.add_subparsers(dest="track", required=True, metavar="TRACK")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(tracks)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"bcr: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"bcr: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
