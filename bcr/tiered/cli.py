"""``bcr tiered run | promote | summarize``: what the tiered Snakemake rules call."""

from __future__ import annotations

import argparse
import time

import pandas as pd

from bcr import config as cfgmod
from bcr import io, provenance
from bcr.cliutil import add_config_arg, load_config
from bcr.contracts import CONTROL_COLUMNS, DENSE_PATH, PROMPT_COLUMNS, QUERY_MODES, TIERED_COLUMNS


def register(tracks: argparse._SubParsersAction) -> None:
    tiered = tracks.add_parser(
        "tiered", help="tiered KV compression: sweep, promotion, summaries"
    ).add_subparsers(dest="command", required=True)
    p = tiered.add_parser("run", help="one setting on one context's prompts: dense vs tiered, interleaved")
    add_config_arg(p)
    p.add_argument("--setting", required=True, help="a name under tiered.settings")
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--prompts", required=True, help="prompt set Parquet (results/prompts/{context}.parquet)")
    p.add_argument("--dense", help="dense baseline Parquet: its tokens must equal the in-process dense run")
    p.add_argument(
        "--query-mode",
        choices=QUERY_MODES,
        default=QUERY_MODES[0],
        help="compress with the question in view (question_aware) or before it arrives (question_agnostic)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = tiered.add_parser(
        "controls", help="negative controls matched to the promoted settings at one context"
    )
    add_config_arg(p)
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--prompts", required=True, help="prompt set Parquet (results/prompts/{context}.parquet)")
    p.add_argument(
        "--dense", help="dense baseline Parquet: its tokens must equal the shared-prefill dense run"
    )
    p.add_argument("--promoted", required=True, help="the checkpoint's promoted.json (its promoted settings)")
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_controls)

    p = tiered.add_parser("promote", help="the sweep checkpoint: promoted.json and the sweep summary")
    add_config_arg(p)
    p.add_argument("--sweep", nargs="+", required=True, help="sweep Parquet files, one per setting")
    p.add_argument("--out", required=True, help="promoted.json")
    p.add_argument("--summary", required=True, help="sweep summary Parquet")
    p.set_defaults(func=cmd_promote)

    p = tiered.add_parser("summarize", help="the promotion summary table")
    add_config_arg(p)
    p.add_argument(
        "--inputs", nargs="*", default=[], help="promotion Parquet files (none when nothing promoted)"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_summarize)


def cmd_run(args: argparse.Namespace) -> int:
    from bcr.tiered.harness import measure_setting
    from bcr.tiered.settings import resolve

    config = load_config(args)
    tcfg = config["tiered"]
    if args.setting not in tcfg["settings"]:
        raise cfgmod.ConfigError(
            f"--setting {args.setting!r} is not a tiered setting (known: {', '.join(sorted(tcfg['settings']))})"
        )
    setting = resolve(config, args.setting)
    device, prompts, reference, loaded = _load_run_inputs(args, config)

    def progress(row: dict) -> None:
        if not args.quiet:
            print(
                f"{row['prompt_id']} {row['decode_path']}: exact={row['exact']} C={row['compression']:.3f} "
                f"ttft x{row['ttft_ratio']:.2f} tpot x{row['tpot_ratio']:.2f}",
                flush=True,
            )

    generation = dict(config["generation"])
    if tcfg.get("repeats") is not None:
        generation["repeats"] = int(tcfg["repeats"])
    t0 = time.perf_counter()
    df = measure_setting(
        loaded,
        prompts,
        setting,
        list(tcfg["decode_paths"]),
        generation,
        device,
        dense_reference=reference,
        progress=progress,
        query_mode=args.query_mode,
    )
    provenance.write_rows(df, args.out, config, device)
    t = df[df["decode_path"] != DENSE_PATH]
    print(
        f"tiered {args.setting} @ {args.context}: answer exact {int(t['exact_answer'].sum())}/{len(t)}, "
        f"whole trajectory {int(t['exact'].sum())}/{len(t)}, "
        f"compression {t['compression'].median():.3f}, ttft x{t['ttft_ratio'].median():.2f}, "
        f"tpot x{t['tpot_ratio'].median():.2f} ({time.perf_counter() - t0:.1f}s)"
    )
    return 0


def _load_run_inputs(args: argparse.Namespace, config: dict):
    """The prompts (checked against --context, cut to tiered.n_prompts), the dense reference tokens, the model."""
    from bcr import models
    from bcr.runtime import setup_runtime

    if args.context not in config["prompts"]["contexts"]:
        raise cfgmod.ConfigError(f"--context {args.context} is not one of prompts.contexts")
    device = setup_runtime(config["runtime"])
    prompts = io.read_parquet(args.prompts, PROMPT_COLUMNS)
    if (prompts["context"] != args.context).any():
        raise ValueError(f"{args.prompts}: prompts are not all of context {args.context}")
    n = config["tiered"].get("n_prompts")
    if n is not None:
        prompts = prompts.head(int(n))
    reference = None
    if args.dense:
        dense = io.read_parquet(args.dense, ["prompt_id", "output_ids"])
        reference = {r["prompt_id"]: list(r["output_ids"]) for r in dense.to_dict("records")}
    return device, prompts, reference, models.load_model(config["model"], device, root=cfgmod.REPO_ROOT)


def cmd_controls(args: argparse.Namespace) -> int:
    from bcr.tiered.harness import measure_controls
    from bcr.tiered.settings import resolve

    config = load_config(args)
    spec = config["tiered"].get("negative_controls")
    if not spec or not spec["kinds"]:
        raise cfgmod.ConfigError("tiered.negative_controls: no control kinds configured")
    device, prompts, reference, loaded = _load_run_inputs(args, config)
    promoted = io.read_json(args.promoted)["promoted"]
    settings = [resolve(config, s) for s in promoted]
    if settings:
        df = measure_controls(
            loaded,
            prompts,
            settings,
            list(spec["kinds"]),
            config["generation"],
            device,
            dense_reference=reference,
            seed=int(spec["seed"]),
        )
    else:  # nothing promoted: nothing to match a control to (the file says so by having no rows)
        df = pd.DataFrame(columns=CONTROL_COLUMNS)
    provenance.write_rows(df, args.out, config, device)
    for (setting, kind), g in df.groupby(["matched_to", df["control"].fillna("(the setting)")], sort=True):
        print(
            f"{kind} ~ {setting} @ {args.context}: answer exact {int(g['exact_answer'].sum())}/{len(g)}, "
            f"whole trajectory {int(g['exact'].sum())}/{len(g)}, "
            f"stored {g['stored_fraction'].mean():.3f}"
        )
    return 0


def _read_rows(paths: list[str]) -> pd.DataFrame:
    frames = [io.read_parquet(p, [*TIERED_COLUMNS, "lost", "device"]) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TIERED_COLUMNS)


def _measured_on(rows: pd.DataFrame) -> str | None:
    """The devices a summary's rows were measured on (the summarising job may run elsewhere)."""
    devices = sorted(set(rows["device"])) if "device" in rows else []
    return ",".join(devices) or None


def cmd_promote(args: argparse.Namespace) -> int:
    from bcr.tiered import settings as ts
    from bcr.tiered.sweep import promote, sweep_summary

    config = load_config(args)
    rows = _read_rows(args.sweep)
    context = ts.sweep_context(config)
    if set(rows["context"].astype(int)) != {context}:
        raise ValueError(f"sweep files are not all at the sweep context {context}")
    decision = promote(
        rows,
        ts.sweep_settings(config),
        ts.control_settings(config),
        ts.promotion_override(config),
        ts.promotion_max_settings(config),
    )
    decision["promotion_contexts"] = ts.promotion_contexts(config)
    summary = sweep_summary(rows, ts.control_settings(config), decision["promoted"])
    prov = provenance.write_rows(summary, args.summary, config, "cpu", measured_on=_measured_on(rows))
    decision["run_id"] = prov["run_id"]
    io.write_json(decision, args.out)
    print(
        f"promoted at {context}: {decision['promoted']} (runs: {decision['run']}, source {decision['source']})"
    )
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from bcr.tiered.sweep import promotion_summary

    config = load_config(args)
    rows = _read_rows(args.inputs)
    summary = promotion_summary(rows)
    provenance.write_rows(summary, args.out, config, "cpu", measured_on=_measured_on(rows))
    print(
        summary.to_string(index=False)
        if not summary.empty
        else "no promoted settings: empty promotion summary"
    )
    return 0
