"""Core sub-commands: ``bcr model ...``, ``bcr prompts ...``, ``bcr dense ...``."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from bcr import config as cfgmod
from bcr import io, provenance
from bcr.cliutil import add_config_arg, add_model_arg, load_config
from bcr.codehash import command_hash
from bcr.contracts import ACCURACY_COLUMNS, PROMPT_COLUMNS, PROMPT_WORKLOADS, WORKLOAD


def register(tracks: argparse._SubParsersAction) -> None:
    model = tracks.add_parser("model", help="build, train and describe the model").add_subparsers(
        dest="command", required=True
    )
    p = model.add_parser("train", help="train a local tiny model (the primary, or --model)")
    add_config_arg(p)
    add_model_arg(p)
    p.add_argument("--out", help="checkpoint directory (default: the config's model.path)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_model_train)

    p = model.add_parser("card", help="describe the loaded model; task accuracy per context")
    add_config_arg(p)
    add_model_arg(p)
    p.add_argument("--out", required=True, help="model card JSON")
    p.add_argument("--accuracy", required=True, help="accuracy Parquet (one row per context)")
    p.add_argument(
        "--contexts",
        type=int,
        nargs="+",
        help="the contexts to measure accuracy at (default: every prompts.contexts entry; the "
        "workflow measures an extra model where it runs, the sweep context)",
    )
    p.set_defaults(func=cmd_model_card)

    prompts_p = tracks.add_parser("prompts", help="deterministic prompt sets").add_subparsers(
        dest="command", required=True
    )
    p = prompts_p.add_parser("build", help="build the prompt set for one context length")
    add_config_arg(p)
    p.add_argument("--context", type=int, required=True)
    p.add_argument(
        "--workload",
        choices=PROMPT_WORKLOADS,
        default=PROMPT_WORKLOADS[0],
        help="prompt family: one needle, its value scattered, or several needles (text renderer)",
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_prompts_build)

    dense = tracks.add_parser("dense", help="dense baseline").add_subparsers(dest="command", required=True)
    p = dense.add_parser("run", help="greedy generation with the stock cache, determinism-gated")
    add_config_arg(p)
    add_model_arg(p)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--untimed",
        action="store_true",
        help="the job shares its cores: keep no clocks (null TTFT/TPOT), skip the warm-up run",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_dense_run)


# --- model ---------------------------------------------------------------------------------------


def cmd_model_train(args: argparse.Namespace) -> int:
    from bcr import models, training
    from bcr.runtime import setup_runtime

    config = load_config(args)
    mcfg = config["model"]
    if mcfg["source"] != "local":
        raise cfgmod.ConfigError(
            "model.source: `bcr model train` trains the local tiny model; this config loads a hub model"
        )
    setup_runtime(config["runtime"])
    out = Path(args.out) if args.out else models.checkpoint_path(mcfg, cfgmod.REPO_ROOT)
    spec = training.needle_spec(config["prompts"], mcfg["architecture"])
    t0 = time.perf_counter()
    result = training.train(
        mcfg["architecture"],
        mcfg["training"],
        spec,
        progress=not args.quiet,
        log_every=50 if args.quiet else 0,
    )
    seconds = time.perf_counter() - t0
    accuracy = {
        str(c): training.needle_accuracy(
            result.model, spec, c, mcfg["training"]["eval_prompts"], mcfg["training"]["seed"]
        )
        for c in config["prompts"]["contexts"]
    }
    # Write into a temporary sibling, then swap: an interrupted training never leaves half a checkpoint.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        result.model.save_pretrained(tmp, safe_serialization=True)
        report = {
            "architecture": mcfg["architecture"],
            "training": mcfg["training"],
            "needle": {"key_len": spec.key_len, "value_len": spec.value_len},
            "stages": [vars(s) for s in result.stages],
            "train_seconds": round(seconds, 1),
            "teacher_forced_accuracy": accuracy,
            # the same hash the train_tiny_model rule carries: which code produced this checkpoint
            "code_hash": command_hash("model", "train"),
            "model_sha256": models.sha256_file(tmp / "model.safetensors"),
            "torch_threads": config["runtime"]["threads"],
        }
        io.write_json(report, tmp / "training.json")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"trained {out} in {seconds:.0f}s; teacher-forced accuracy {accuracy}")
    return 0


def cmd_model_card(args: argparse.Namespace) -> int:
    from bcr import models, training
    from bcr.runtime import setup_runtime

    config = load_config(args)
    device = setup_runtime(config["runtime"])
    mcfg = config["model"]
    loaded = models.load_model(mcfg, device, root=cfgmod.REPO_ROOT)
    m = loaded.model
    card = {
        "name": mcfg["name"],
        "source": mcfg["source"],
        "hub_id": mcfg.get("hub_id"),
        "revision": mcfg.get("revision"),
        "dtype": mcfg["dtype"],
        "attn_implementation": mcfg["attn_implementation"],
        "parameters": sum(p.numel() for p in m.parameters()),
        "layers": m.config.num_hidden_layers,
        "kv_heads": m.config.num_key_value_heads,
        "head_dim": getattr(m.config, "head_dim", None)
        or m.config.hidden_size // m.config.num_attention_heads,
        "heads": m.config.num_attention_heads,
        "max_position_embeddings": m.config.max_position_embeddings,
        "provenance": provenance.provenance(config, device),
    }
    rows = []
    if mcfg["source"] == "local":
        ckpt = models.checkpoint_path(mcfg, cfgmod.REPO_ROOT)
        card["checkpoint"] = str(mcfg["path"])
        card["model_sha256"] = models.sha256_file(ckpt / "model.safetensors")
        train_report = ckpt / "training.json"
        if train_report.is_file():
            card["training"] = io.read_json(train_report)
        spec = training.needle_spec(config["prompts"], mcfg["architecture"])
        n = config.get("model_card", {}).get("eval_prompts") or mcfg["training"]["eval_prompts"]
        contexts = list(config["prompts"]["contexts"])
        unknown = [c for c in args.contexts or [] if c not in contexts]
        if unknown:
            raise cfgmod.ConfigError(f"--contexts {unknown}: not in prompts.contexts {contexts}")
        for workload in config["prompts"]["workloads"]:
            for c in args.contexts or contexts:
                acc = training.needle_accuracy(m, spec, c, n, config["runtime"]["seed"] + 1, workload)
                rows.append(
                    {
                        WORKLOAD: workload,
                        "context": c,
                        "n": n,
                        "accuracy": acc,
                        "metric": "teacher_forced_answer",
                    }
                )
    card["accuracy"] = rows
    df = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    provenance.write_rows(df, args.accuracy, config, device)
    io.write_json(card, args.out)
    for r in rows:
        print(f"{r[WORKLOAD]} @ {r['context']}: answer accuracy {r['accuracy']:.3f} (n={r['n']})")
    return 0


# --- prompts -------------------------------------------------------------------------------------


def cmd_prompts_build(args: argparse.Namespace) -> int:
    from bcr import prompts  # torch and transformers only for the text renderer's tokenizer

    config = load_config(args)
    pcfg = config["prompts"]
    if args.context not in pcfg["contexts"]:
        raise cfgmod.ConfigError(
            f"--context {args.context} is not one of prompts.contexts {pcfg['contexts']}"
        )
    if args.workload not in pcfg["workloads"]:
        raise cfgmod.ConfigError(
            f"--workload {args.workload} is not one of prompts.workloads {pcfg['workloads']}"
        )
    if pcfg["renderer"] == "synthetic":
        if config["model"]["source"] != "local":
            raise cfgmod.ConfigError(
                "prompts.renderer: 'synthetic' prompts need the local tiny model's vocabulary"
            )
        spec = prompts.needle_spec(pcfg, config["model"]["architecture"])
        df = prompts.synthetic_prompt_set(args.context, pcfg["n_prompts"], pcfg["seed"], spec, args.workload)
    else:
        from bcr import models

        tok = models.load_tokenizer(config["model"])
        if tok is None:
            raise cfgmod.ConfigError("prompts.renderer: 'text' prompts need a hub model with a tokenizer")
        df = prompts.text_prompt_set(
            tok,
            args.context,
            pcfg["n_prompts"],
            pcfg["seed"],
            config["generation"]["max_new_tokens"],
            args.workload,
        )
    io.write_parquet(df, args.out)
    print(f"{len(df)} {args.workload} prompts of {args.context} tokens -> {args.out}")
    return 0


# --- dense ---------------------------------------------------------------------------------------


def cmd_dense_run(args: argparse.Namespace) -> int:
    from bcr import models
    from bcr.dense import run_dense
    from bcr.runtime import setup_runtime

    config = load_config(args)
    device = setup_runtime(config["runtime"])
    prompts_df = io.read_parquet(args.prompts, PROMPT_COLUMNS)
    loaded = models.load_model(config["model"], device, root=cfgmod.REPO_ROOT)
    df = run_dense(
        loaded, prompts_df, config["generation"], device, timed=not args.untimed, progress=not args.quiet
    )
    provenance.write_rows(df, args.out, config, device)
    acc = df["answer_correct"].mean()
    ttft = "untimed" if args.untimed else f"median TTFT {df['ttft_s'].median():.4f}s"
    print(f"dense: {len(df)} prompts, answer accuracy {acc:.3f}, {ttft}")
    return 0
