"""``bcr tiered run | promote | summarize``: what the tiered Snakemake rules call."""

from __future__ import annotations

import argparse
import time

import pandas as pd

from bcr import config as cfgmod
from bcr import io, provenance
from bcr.cliutil import add_config_arg, add_model_arg, load_config
from bcr.contracts import (
    CONTROL_COLUMNS,
    DECODE_PATHS,
    DENSE_PATH,
    PROMPT_COLUMNS,
    QUERY_MODES,
    TIERED_COLUMNS,
)


def register(tracks: argparse._SubParsersAction) -> None:
    tiered = tracks.add_parser(
        "tiered", help="tiered KV compression: sweep, promotion, summaries"
    ).add_subparsers(dest="command", required=True)
    p = tiered.add_parser(
        "run", help="tiered settings on one context's prompts: one shared prefill per prompt, dense beside"
    )
    add_config_arg(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--settings", nargs="+", help="names under tiered.settings")
    which.add_argument("--promoted", help="a checkpoint's promoted.json: run its 'run' list")
    p.add_argument("--context", type=int, required=True)
    p.add_argument(
        "--prompts", required=True, help="prompt set Parquet (results/prompts/{workload}/{context}.parquet)"
    )
    p.add_argument("--dense", help="dense baseline Parquet: its tokens must equal the in-process dense run")
    p.add_argument(
        "--query-modes",
        nargs="+",
        choices=QUERY_MODES,
        default=[QUERY_MODES[0]],
        help="compress with the question in view (question_aware) or before it arrives (question_agnostic)",
    )
    p.add_argument(
        "--timed-prompts",
        type=int,
        help="time fresh interleaved runs on the first N prompts (default: tiered.timed_prompts; 0: none)",
    )
    p.add_argument("--out", nargs="+", required=True, help="one Parquet per --query-modes entry, in order")
    p.add_argument(
        "--decode-paths",
        nargs="+",
        choices=DECODE_PATHS,
        help="tiered decode paths to run (default: tiered.decode_paths; the sweep runs the first only)",
    )
    p.add_argument(
        "--decomposition",
        help="also write the latency decomposition of the first tiered.decomposition_prompts timed "
        "prompts here (instrumented runs in the same rounds; empty when nothing is timed)",
    )
    p.add_argument(
        "--time-headline",
        metavar="CLAIMS",
        help="time only the headline setting the claim file's rule picks (per mode) from this run's "
        "exactness rows and --headline-rows (the latency claims read no other setting's clocks)",
    )
    p.add_argument(
        "--headline-rows",
        nargs="*",
        default=[],
        help="the same family's promotion rows at the other promotion contexts (for --time-headline)",
    )
    p.add_argument(
        "--exact-rows",
        nargs="+",
        help="one per --query-modes entry: an untimed run's exactness rows of these prompts and settings "
        "(with --time-headline). The headline is chosen from them and rerun alone, timed, on the first "
        "timed prompts; the output is these rows with the timed ones in place (tokens must agree)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = tiered.add_parser(
        "controls", help="negative controls matched to the promoted settings at one context"
    )
    add_config_arg(p)
    p.add_argument("--context", type=int, required=True)
    p.add_argument(
        "--prompts", required=True, help="prompt set Parquet (results/prompts/{workload}/{context}.parquet)"
    )
    p.add_argument(
        "--dense", help="dense baseline Parquet: its tokens must equal the shared-prefill dense run"
    )
    p.add_argument("--promoted", required=True, help="the checkpoint's promoted.json (its promoted settings)")
    p.add_argument(
        "--query-mode", choices=QUERY_MODES, required=True, help="the mode the checkpoint promoted for"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_controls)

    p = tiered.add_parser(
        "frontier", help="the exactness frontier: tiered.frontier's grid at one context, one model"
    )
    add_config_arg(p)
    add_model_arg(p)
    p.add_argument("--context", type=int, required=True)
    p.add_argument(
        "--prompts", required=True, help="prompt set Parquet (results/prompts/{workload}/{context}.parquet)"
    )
    p.add_argument("--dense", help="the model's dense baseline Parquet, when it has one (the primary)")
    p.add_argument("--query-modes", nargs="+", choices=QUERY_MODES, default=list(QUERY_MODES))
    p.add_argument("--out", nargs="+", required=True, help="one Parquet per --query-modes entry, in order")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_frontier)

    p = tiered.add_parser("promote", help="the sweep checkpoint: promoted.json and the sweep summary")
    add_config_arg(p)
    p.add_argument("--sweep", nargs="+", required=True, help="the sweep's Parquet file(s) of one query mode")
    p.add_argument("--query-mode", choices=QUERY_MODES, required=True, help="the mode the sweep files hold")
    p.add_argument("--out", required=True, help="promoted.json")
    p.add_argument("--summary", required=True, help="sweep summary Parquet")
    p.set_defaults(func=cmd_promote)

    p = tiered.add_parser(
        "decomposition", help="gather the promotion runs' latency decompositions into one table"
    )
    add_config_arg(p)
    p.add_argument("--inputs", nargs="*", default=[], help="per-run decomposition Parquet files")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_decomposition)

    p = tiered.add_parser("summarize", help="the promotion summary table")
    add_config_arg(p)
    p.add_argument(
        "--inputs", nargs="*", default=[], help="promotion Parquet files (none when nothing promoted)"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_summarize)


def _check_outs(args: argparse.Namespace) -> None:
    if len(args.out) != len(args.query_modes):
        raise cfgmod.ConfigError(
            f"--out names {len(args.out)} files for {len(args.query_modes)} --query-modes (one each)"
        )


def _settings(config: dict, names: list[str]) -> list:
    from bcr.tiered.settings import resolve

    known = config["tiered"]["settings"]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise cfgmod.ConfigError(
            f"--settings {unknown} are not tiered settings (known: {', '.join(sorted(known))})"
        )
    return [resolve(config, n) for n in names]


def _summary_line(what: str, context: int, t: pd.DataFrame) -> str:
    """One line per (setting, mode): answer and whole-trajectory exact counts, compression, ratios."""
    line = (
        f"{what} @ {context}: answer exact {int(t['exact_answer'].sum())}/{len(t)}, "
        f"whole trajectory {int(t['exact'].sum())}/{len(t)}, stored {t['stored_fraction'].median():.3f}"
    )
    timed = t["tpot_ratio"].dropna()
    if len(timed):
        line += (
            f", ttft x{t['ttft_ratio'].dropna().median():.2f}, tpot x{timed.median():.2f} "
            f"({len(timed)} timed)"
        )
    return line


def cmd_run(args: argparse.Namespace) -> int:
    from bcr.tiered.harness import decomposition_frame, measure

    config = load_config(args)
    tcfg = config["tiered"]
    names = args.settings if args.settings else list(io.read_json(args.promoted)["run"])
    settings = _settings(config, names)
    _check_outs(args)
    device, prompts, reference, loaded = _load_run_inputs(args, config)

    def progress(row: dict) -> None:
        if not args.quiet:
            print(
                f"{row['prompt_id']} {row['setting']} {row['query_mode']} {row['decode_path']}: "
                f"answer exact={row['exact_answer']} exact={row['exact']} C={row['compression']:.3f}",
                flush=True,
            )

    generation = dict(config["generation"])
    if tcfg.get("repeats") is not None:
        generation["repeats"] = int(tcfg["repeats"])
    timed = args.timed_prompts if args.timed_prompts is not None else tcfg.get("timed_prompts")
    phases: list[dict] = []
    n_phases = int(tcfg.get("decomposition_prompts", 0)) if args.decomposition else 0
    chooser = _headline_chooser(args, config) if args.time_headline else None
    t0 = time.perf_counter()
    paths = list(args.decode_paths or tcfg["decode_paths"])
    if args.exact_rows:
        frames = _time_over_exact_rows(
            args,
            config,
            loaded,
            prompts,
            settings,
            paths,
            generation,
            device,
            timed,
            reference,
            n_phases,
            phases,
        )
    elif settings:
        frames = measure(
            loaded,
            prompts,
            settings,
            paths,
            generation,
            device,
            args.query_modes,
            timed_prompts=timed,
            dense_reference=reference,
            progress=progress,
            decomposition_prompts=n_phases,
            decomposition=phases,
            timed_settings=chooser,
        )
    else:  # nothing promoted
        frames = {m: pd.DataFrame(columns=TIERED_COLUMNS) for m in args.query_modes}
    if args.decomposition:
        decomp = decomposition_frame(phases)
        provenance.write_rows(decomp, args.decomposition, config, device)
        for (setting, path), g in decomp.groupby(["setting", "decode_path"], sort=False):
            per = g.groupby("phase", sort=False)["seconds"].mean() * 1000
            print(f"phases {setting} ({path}) ms: " + ", ".join(f"{k} {v:.1f}" for k, v in per.items() if v))
    for mode, out in zip(args.query_modes, args.out, strict=True):
        df = frames[mode]
        provenance.write_rows(df, out, config, device)
        t = df[df["decode_path"] != DENSE_PATH]
        for (setting, path), g in t.groupby(["setting", "decode_path"], sort=False):
            print(_summary_line(f"tiered {setting} ({mode}, {path})", args.context, g))
    print(f"({time.perf_counter() - t0:.1f}s)")
    return 0


def _time_over_exact_rows(
    args, config, loaded, prompts, settings, paths, generation, device, timed, reference, n_phases, phases
) -> dict[str, pd.DataFrame]:
    """Per mode: the headline setting chosen from the untimed job's rows (``--exact-rows``), rerun
    alone on the first ``timed`` prompts with its clocks, its rows put in place of the untimed ones
    (:func:`bcr.tiered.harness.merge_timed`, which fails if the two jobs computed different tokens)."""
    from bcr.tiered.harness import measure, merge_timed

    if not args.time_headline:
        raise cfgmod.ConfigError("--exact-rows needs --time-headline (the rule that picks what to time)")
    if len(args.exact_rows) != len(args.query_modes):
        raise cfgmod.ConfigError(
            f"--exact-rows names {len(args.exact_rows)} files for {len(args.query_modes)} --query-modes"
        )
    chooser = _headline_chooser(args, config)
    head = prompts if timed is None else prompts.head(int(timed))
    want, promoted = set(prompts["prompt_id"]), {s.name for s in settings}
    frames = {}
    for mode, path in zip(args.query_modes, args.exact_rows, strict=True):
        exact = io.read_parquet(path, TIERED_COLUMNS)
        if (
            set(exact["prompt_id"]) != want
            or set(exact["query_mode"]) != {mode}
            or set(exact["setting"]) != promoted
        ):
            raise cfgmod.ConfigError(
                f"{path}: its rows are not this run's ({mode}, {len(want)} prompts, settings {sorted(promoted)}): "
                f"modes {sorted(set(exact['query_mode']))}, {exact['prompt_id'].nunique()} prompts, "
                f"settings {sorted(set(exact['setting']))}"
            )
        names = chooser({mode: exact})
        if not names or not len(head):
            frames[mode] = exact
            continue
        timed_rows = measure(
            loaded,
            head,
            _settings(config, names),
            paths,
            generation,
            device,
            [mode],
            timed_prompts=None,
            dense_reference=reference,
            decomposition_prompts=n_phases,
            decomposition=phases,
        )[mode]
        frames[mode] = merge_timed(exact, timed_rows)
    return frames


def _headline_chooser(args: argparse.Namespace, config: dict):
    """``timed_settings`` for :func:`bcr.tiered.harness.measure`: per mode, the headline setting
    (:func:`bcr.headline.choose`, the ledger's own choice) over this run's exactness rows and the
    smaller promotion contexts' rows, so the clocks are spent where the claims read them."""
    from bcr import headline

    rule = headline.read_rule(args.time_headline)
    others = [io.read_parquet(p, TIERED_COLUMNS) for p in args.headline_rows]

    def choose(frames: dict[str, pd.DataFrame]) -> list[str]:
        names = []
        for mode, df in frames.items():
            rows = pd.concat([*(o[o["query_mode"] == mode] for o in others), df], ignore_index=True)
            h = headline.choose(rule, config, rows)
            print(f"timing {mode}: {h.reason}" if h.setting else f"timing {mode}: no setting ({h.reason})")
            if h.setting:
                names.append(h.setting)
        return names

    return choose


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

    config = load_config(args)
    spec = config["tiered"].get("negative_controls")
    if not spec or not spec["kinds"]:
        raise cfgmod.ConfigError("tiered.negative_controls: no control kinds configured")
    device, prompts, reference, loaded = _load_run_inputs(args, config)
    decision = io.read_json(args.promoted)
    if spec.get("match", "most_compressed") == "most_compressed":  # the one the test-bed claim reads
        matched = [decision["most_compressed"]] if decision.get("most_compressed") else []
    else:  # every setting measured at promotion
        matched = list(decision["run"])
    settings = _settings(config, matched)
    if settings:
        df = measure_controls(
            loaded,
            prompts,
            settings,
            list(spec["kinds"]),
            config["generation"],
            device,
            [args.query_mode],
            dense_reference=reference,
            seed=int(spec["seed"]),
            decode_path=config["tiered"]["decode_paths"][0],  # exactness is decided on the first path
        )[args.query_mode]
    else:  # nothing promoted: nothing to match a control to (the file says so by having no rows)
        df = pd.DataFrame(columns=CONTROL_COLUMNS)
    provenance.write_rows(df, args.out, config, device)
    for (setting, kind), g in df.groupby(["matched_to", df["control"].fillna("(the setting)")], sort=True):
        print(_summary_line(f"{kind} ~ {setting} ({args.query_mode})", args.context, g))
    return 0


def cmd_frontier(args: argparse.Namespace) -> int:
    from bcr.tiered import frontier
    from bcr.tiered.harness import measure

    config = load_config(args)
    if not config["tiered"].get("frontier"):
        raise cfgmod.ConfigError("tiered.frontier: no frontier grid configured")
    _check_outs(args)
    points = frontier.grid(config)
    device, prompts, reference, loaded = _load_run_inputs(args, config)
    t0 = time.perf_counter()
    frames = measure(
        loaded,
        prompts,
        [s for s, _, _ in points],
        list(config["tiered"]["decode_paths"][:1]),  # exactness is decided on the first path
        config["generation"],
        device,
        args.query_modes,
        timed_prompts=0,
        dense_reference=reference,
    )
    knob = {s.name: (k, v) for s, k, v in points}
    for mode, out in zip(args.query_modes, args.out, strict=True):
        df = frames[mode]
        dense = df[df["decode_path"] == DENSE_PATH].drop_duplicates("prompt_id")
        correct = dict(zip(dense["prompt_id"], dense["answer_correct"].astype(bool), strict=True))
        df = df[df["decode_path"] != DENSE_PATH].reset_index(drop=True)
        df["dense_answer_correct"] = df["prompt_id"].map(correct)
        df["knob"] = df["setting"].map(lambda n: knob[n][0])
        df["knob_value"] = df["setting"].map(lambda n: knob[n][1])
        provenance.write_rows(df, out, config, device)
        for setting, g in df.groupby("setting", sort=False):
            print(_summary_line(f"{loaded.name} {setting} ({mode})", args.context, g))
    print(f"({time.perf_counter() - t0:.1f}s, {len(points)} grid points)")
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
    if set(rows["query_mode"]) != {args.query_mode}:
        raise ValueError(f"sweep files hold modes {sorted(set(rows['query_mode']))}, not {args.query_mode}")
    decision = promote(
        rows,
        ts.sweep_settings(config),
        ts.control_settings(config),
        ts.promotion_override(config),
        ts.promotion_max_settings(config),
    )
    decision["promotion_contexts"] = ts.promotion_contexts(config)
    decision["query_mode"] = args.query_mode
    summary = sweep_summary(rows, ts.control_settings(config), decision["promoted"])
    prov = provenance.write_rows(summary, args.summary, config, "cpu", measured_on=_measured_on(rows))
    decision["run_id"] = prov["run_id"]
    io.write_json(decision, args.out)
    print(
        f"promoted at {context} ({args.query_mode}): {decision['promoted']} (runs: {decision['run']}, source {decision['source']})"
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


def cmd_decomposition(args: argparse.Namespace) -> int:
    from bcr.contracts import DECOMPOSITION_COLUMNS

    config = load_config(args)
    frames = [io.read_parquet(p, DECOMPOSITION_COLUMNS) for p in args.inputs]
    frames = [f for f in frames if len(f)]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DECOMPOSITION_COLUMNS)
    provenance.write_rows(
        rows[DECOMPOSITION_COLUMNS], args.out, config, "cpu", measured_on=_measured_on(rows)
    )
    if rows.empty:
        print("no instrumented runs: empty decomposition")
        return 0
    per = rows.groupby(["context", "setting", "decode_path", "phase"], sort=True)["seconds"].mean() * 1000
    print(per.unstack("phase").round(2).to_string())
    return 0
