"""``bcr site ...``: render pages and build the site."""

from __future__ import annotations

import argparse
from pathlib import Path

from bcr.commands import add_config_arg, load_config


def register(tracks: argparse._SubParsersAction) -> None:
    site = tracks.add_parser("site", help="render result pages and build the MkDocs site").add_subparsers(
        dest="command", required=True
    )
    p = site.add_parser("build", help="render templates into results/site_src and run mkdocs build --strict")
    add_config_arg(p)
    p.add_argument("--repo", default=".", help="repository root (holds mkdocs.yml and site/)")
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from bcr.ledger.site import build

    config = load_config(args)
    index = build(Path(args.repo).resolve(), Path(args.results).resolve(), config)
    print(f"site built: {index}")
    return 0
