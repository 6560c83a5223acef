"""``bcr peers ...``: kvpress's presses on one family's prompts, and the comparison with ours."""

from __future__ import annotations

import argparse
from pathlib import Path

from bcr.cliutil import add_config_arg, load_config


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, path = v.partition("=")
        if not sep:
            raise SystemExit(f"--{what} takes KEY=PATH, got {v!r}")
        out[key] = path
    return out


def register(tracks: argparse._SubParsersAction) -> None:
    peers = tracks.add_parser("peers", help="kvpress presses beside the tiered cache").add_subparsers(
        dest="command", required=True
    )
    p = peers.add_parser("run", help="every configured press on one family's prompts, both modes")
    add_config_arg(p)
    p.add_argument("--workload", required=True)
    p.add_argument("--prompts", nargs="+", required=True, metavar="CONTEXT=PATH")
    p.add_argument(
        "--dense", nargs="+", required=True, metavar="CONTEXT=PATH", help="the main env's dense rows"
    )
    p.add_argument(
        "--promoted", nargs="+", required=True, metavar="MODE=PATH", help="the sweep's promoted json"
    )
    p.add_argument("--summary", nargs="+", required=True, metavar="MODE=PATH", help="the sweep summary")
    p.add_argument(
        "--frontier", nargs="*", default=[], metavar="MODE=PATH", help="the primary model's frontier"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_run)

    p = peers.add_parser("compare", help="every press's rows beside ours at the matched settings")
    p.add_argument("--runs", nargs="+", required=True, help="peers/runs/*.parquet")
    p.add_argument("--tiered", nargs="*", default=[], help="sweep, frontier and promotion rows")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_compare)


def cmd_run(args: argparse.Namespace) -> int:
    import pandas as pd

    from bcr import io
    from bcr.peers import plan

    config = load_config(args)
    promoted = {m: io.read_json(p) for m, p in _pairs(args.promoted, "promoted").items()}
    summaries = {
        m: io.read_parquet(p, ["setting", "stored_fraction"])
        for m, p in _pairs(args.summary, "summary").items()
    }
    frontiers = {
        m: io.read_parquet(p, ["setting", "stored_fraction"])
        for m, p in _pairs(args.frontier, "frontier").items()
    }
    by_mode, missing = plan.points(promoted, summaries, frontiers, int(config["peers"]["lower_points"]))
    for mode, reason in missing.items():
        print(f"{args.workload} {mode}: {reason}")
    for mode, pts in by_mode.items():
        text = ", ".join(f"{p['setting']} (stored {p['stored_fraction']:.3f})" for p in pts)
        print(f"{args.workload} {mode}: {text}")
    prompts = {int(c): p for c, p in _pairs(args.prompts, "prompts").items()}
    frames, versions = [], {}
    if by_mode:
        job = plan.build_job(config, args.workload, prompts, by_mode)
        rows, versions = plan.run_job(job, plan.peer_python(config))
        frames.append(rows)
    frames += [plan.unplanned_rows(config, args.workload, prompts, m, r) for m, r in missing.items()]
    rows = pd.concat(frames, ignore_index=True)
    dense = {
        int(c): io.read_parquet(p, ["prompt_id", "output_ids"])
        for c, p in _pairs(args.dense, "dense").items()
    }
    rows["dense_equal_main"] = plan.dense_agreement(rows, dense)
    plan.write(rows, versions, args.out, config)
    if rows["error"].notna().any():
        print(
            f"{int(rows['error'].notna().sum())} of {len(rows)} rows failed: {rows['error'].dropna().iloc[0]}"
        )
    measured = rows[rows["error"].isna()]
    if len(measured):
        t = measured.groupby(["query_mode", "context", "press", "setting_matched"])["exact_answer"].agg(
            ["sum", "size"]
        )
        print(t.to_string())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:

    from bcr import contracts as C
    from bcr import io
    from bcr.peers.compare import comparison

    runs = [io.read_parquet(p, C.PEERS_RUN_COLUMNS) for p in args.runs]
    tiered = [io.read_parquet(p, C.TIERED_COLUMNS) for p in args.tiered if Path(p).is_file()]
    df = comparison(runs, tiered)
    io.write_parquet(df, args.out)
    print(df.groupby(["query_mode", "context", "press"])["exact_answer"].agg(["sum", "size"]).to_string())
    return 0
