"""``bcr serving ...``: request-level serving runs, long-context correctness and their summary."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from bcr.cliutil import add_config_arg, load_config


def register(tracks: argparse._SubParsersAction) -> None:
    serving = tracks.add_parser(
        "serving", help="exact-prefix serving: every arm behind a real server"
    ).add_subparsers(dest="command", required=True)
    p = serving.add_parser("run", help="one workload through every arm's server (or each at 0% reuse)")
    add_config_arg(p)
    p.add_argument("--workload", required=True)
    p.add_argument(
        "--force-miss", action="store_true", help="every arm at 0%% reuse (SGLANG_RADIX_FORCE_MISS=1)"
    )
    p.add_argument("--results", default="results", help="results root (rows go to serving/{engine}/...)")
    p.add_argument("--logs", required=True, help="directory for the servers' logs (kept)")
    p.set_defaults(func=cmd_run)

    p = serving.add_parser("longctx", help="long-context correctness: the longctx workload, arm vs baseline")
    add_config_arg(p)
    p.add_argument("--results", default="results")
    p.add_argument("--logs", required=True)
    p.set_defaults(func=cmd_longctx)

    p = serving.add_parser("summary", help="the Result-1 table from every arm's request rows")
    add_config_arg(p)
    p.add_argument("--requests", nargs="+", required=True, help="request Parquet files of every arm")
    p.add_argument("--claims", help="claims file whose `bootstrap` settings the intervals use (the ledger's)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_summary)


def _terminate_as_exit() -> None:
    """SIGTERM (Snakemake stopping a job) unwinds like Ctrl-C, so every server started is stopped."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _writer(config: dict, device: str):
    from bcr import provenance

    def write(df, path: Path) -> None:
        provenance.write_rows(df, path, config, device)

    return write


def _device(config: dict) -> str:
    return "cuda" if config["serving"]["engine"] == "sglang" else config["runtime"].get("device", "cpu")


def cmd_run(args: argparse.Namespace) -> int:
    from bcr import contracts as C
    from bcr.serving import runs

    _terminate_as_exit()
    config = load_config(args)
    engine = config["serving"]["engine"]
    root = Path(args.results)

    def out(arm: str, force_miss: bool) -> Path:
        spec = C.SERVING_FORCE_MISS if force_miss else C.SERVING_REQUESTS
        return root / spec.pattern.format(engine=engine, workload=args.workload, arm=arm)

    runs.run_workload(
        engine=engine,
        workload=args.workload,
        arms=list(config["serving"]["run"]["arms"]),
        configs=list(args.config),
        config=config,
        out=out,
        log_dir=Path(args.logs),
        force_miss=args.force_miss,
        write=_writer(config, _device(config)),
    )
    return 0


def cmd_longctx(args: argparse.Namespace) -> int:
    from bcr import contracts as C
    from bcr import provenance
    from bcr.serving import correctness, runs
    from bcr.serving.workloads import build_workload

    _terminate_as_exit()
    config = load_config(args)
    engine = config["serving"]["engine"]
    cfg = config["serving"]["correctness"]
    arm, baseline = cfg["arm"], cfg["baseline"]
    root = Path(args.results)

    def out(a: str, _fm: bool) -> Path:
        return root / C.LONGCTX_REQUESTS.pattern.format(engine=engine, arm=a)

    done = runs.run_workload(
        engine=engine,
        workload="longctx",
        arms=[arm, baseline],
        configs=list(args.config),
        config=config,
        out=out,
        log_dir=Path(args.logs),
        force_miss=False,
        write=_writer(config, _device(config)),
        return_logprob=True,
    )
    trace = build_workload("longctx", config["serving"])
    df = correctness.compare(trace, done[(arm, False)], done[(baseline, False)], arm, baseline, engine)
    provenance.write_rows(df, root / C.LONGCTX.pattern, config, _device(config))
    bad = int((~df["exact"]).sum())
    print(
        f"longctx: {len(df)} prompts x {int(df['asks'].iloc[0])} asks, {bad} mismatches; cached tokens "
        f"{arm} {int(df['cached_tokens_arm'].sum())}, {baseline} {int(df['cached_tokens_baseline'].sum())}; "
        f"reused asks equal the cold ask: {arm} {int(df['reused_equals_cold_arm'].sum())}/{len(df)}, "
        f"{baseline} {int(df['reused_equals_cold_baseline'].sum())}/{len(df)}"
    )
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    import pandas as pd

    from bcr import io, provenance
    from bcr.contracts import OUR_ARM
    from bcr.serving import summary

    config = load_config(args)
    frames = [io.read_parquet(p) for p in args.requests]
    df = pd.concat(frames, ignore_index=True)
    boot = None
    if args.claims:
        import yaml

        boot = yaml.safe_load(Path(args.claims).read_text()).get("bootstrap")
    table = summary.summarise(df, arm=OUR_ARM, bootstrap=boot)
    measured = sorted(set(df["device"].astype(str))) if "device" in df.columns else []
    provenance.write_rows(table, args.out, config, "cpu", measured_on=", ".join(measured) or None)
    print(summary.describe(table))
    return 0
