"""``bcr prefix ...``: the cache-operation benchmark and the SGLang server command for an arm."""

from __future__ import annotations

import argparse
import shlex

from bcr.cliutil import add_config_arg, load_config
from bcr.contracts import ARMS


def register(tracks: argparse._SubParsersAction) -> None:
    prefix = tracks.add_parser("prefix", help="bcr exact-prefix cache for SGLang").add_subparsers(
        dest="command", required=True
    )
    p = prefix.add_parser("bench", help="cache-operation cost of every arm on the serving workloads (CPU)")
    add_config_arg(p)
    p.add_argument(
        "--out", required=True, help="Parquet: arm, workload, page_size, op, n, us_p50, us_p99, ..."
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = prefix.add_parser("server-cmd", help="print the sglang.launch_server command (and env) for an arm")
    add_config_arg(p)
    p.add_argument("--arm", required=True, choices=ARMS)
    p.add_argument("--model", help="model path or hub id (default: the config's hub_id or path)")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_server_cmd)


def cmd_bench(args: argparse.Namespace) -> int:
    from bcr import provenance
    from bcr.prefix import bench
    from bcr.runtime import setup_runtime

    config = load_config(args)
    setup_runtime({**config["runtime"], "device": "cpu"})  # a CPU benchmark wherever it runs
    log = (lambda _msg: None) if args.quiet else print
    df = bench.run(config["serving"], log=log)
    provenance.write_rows(df, args.out, config, "cpu")
    print("bcr / unified_rust at p50 (target: ratio <= 1 on every op and the per-request total):")
    print(bench.describe(df))
    return 0


def cmd_server_cmd(args: argparse.Namespace) -> int:
    from bcr.prefix.launcher import TREE_CORE_ENV, spec_from_config

    config = load_config(args)
    model = args.model or config["model"].get("hub_id") or config["model"].get("path")
    overrides = {"port": args.port} if args.port else {}
    spec = spec_from_config(config["serving"], model, args.arm, **overrides)
    env = spec.env({})
    prefix = f"{TREE_CORE_ENV}={env[TREE_CORE_ENV]} " if TREE_CORE_ENV in env else ""
    print(prefix + shlex.join(spec.command()))
    return 0
