"""What every ``bcr`` sub-command shares: the ``--config`` argument and loading it.

Kept apart from the commands themselves so that a track's parser (``bcr site``, ``bcr prefix``)
imports nothing of another track, and nothing heavy, to build its arguments.
"""

from __future__ import annotations

import argparse

from bcr import config as cfgmod


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        action="append",
        required=True,
        metavar="YAML",
        help="config file (repeat to layer overlays; later files win key by key)",
    )


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="NAME",
        help="run on this model of the config (model.name or an extra_models entry; default: the primary)",
    )


def load_config(args: argparse.Namespace) -> dict:
    """The validated config; with ``--model``, with that model in ``model``."""
    return cfgmod.with_model(cfgmod.load(args.config), getattr(args, "model", None))
