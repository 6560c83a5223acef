"""Synthetic result files in the contracts' shapes, for ledger and site tests.

Each writer produces exactly the columns a track writes (plus provenance), with seeded noise, so a
test can flip one piece of evidence (a ratio, one prompt's exactness, the sample size) and watch
the verdict follow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bcr import io
from bcr.contracts import QUERY_MODES
from bcr.ledger.claims import ClaimFile, evaluate, ledger_with_provenance
from bcr.ledger.evidence import TIERED_COLUMNS, load_results
from bcr.ledger.site import build
from bcr.provenance import PROVENANCE_COLUMNS

REPO = Path(__file__).resolve().parents[2]
CONTEXTS = [2048, 4096, 8192]
PROV = {
    "run_id": "cpu-tiny-0123abcd-feedbeef",
    "config_hash": "feedbeefcafef00d",
    "git_commit": "0123abcd4567ef890123abcd4567ef8901234567",
    "model": "tiny-needle",
    "device": "cpu:x86_64x2threads",
    "torch": "2.14.1",
    "transformers": "5.19.0",
    "sglang": "0.5.23",
}


def with_prov(df: pd.DataFrame, **over: str) -> pd.DataFrame:
    out = df.copy()
    for k in PROVENANCE_COLUMNS:
        out[k] = pd.Series([over.get(k, PROV[k])] * len(out), index=out.index, dtype="string")
    return out


BAND_LAYERS = {"front_ret25": [0, 1, 2], "keep_all": [0, 1, 2, 3]}  # middle bands: layers 1-2


def tiered_frame(
    setting: str,
    context: int,
    *,
    n: int = 8,
    paths: tuple[str, ...] = ("dense", "densify"),
    exact: bool | list[bool] = True,
    compression: float = 2.3,
    ttft: float = 2.0,
    tpot: float = 2.0,
    tpot_static: float | None = None,
    peak_ratio: float | None = None,
    kv_ratio: float = 1.4,
    kv_decode_ratio: float | None = None,
    noise: float = 0.02,
    seed: int = 0,
    model: str = "tiny-needle",
    mode: str = "question_aware",
    workload: str = "needle",
    dense_correct: list[bool] | None = None,
) -> pd.DataFrame:
    """One setting at one context: a dense row and one row per tiered decode path for each prompt
    (``dense_correct``: whether dense answers each prompt right; every one by default)."""
    rng = np.random.default_rng(seed + context)
    decode_ratio = kv_ratio if kv_decode_ratio is None else kv_decode_ratio
    flags = [exact] * n if isinstance(exact, bool) else list(exact)
    assert len(flags) == n
    rows = []
    for i in range(n):
        pid = f"p{context}-{i:03d}"
        kv_dense = 4096.0 * context
        peak_dense = 1.5e9 + 1e5 * context
        for path in paths:
            jitter = lambda: float(np.exp(rng.normal(0.0, noise)))  # noqa: E731
            tiered = path != "dense"
            ok = flags[i] if tiered else True
            comp = compression * jitter() if tiered else 1.0
            rows.append(
                {
                    "setting": setting,
                    "workload": workload,
                    "query_mode": mode,
                    "context": context,
                    "prompt_id": pid,
                    "decode_path": path,
                    "exact": ok,
                    "exact_answer": ok,
                    "first_divergence": None if ok else 3,
                    "divergence_margin": None if ok else 2.5,
                    "degenerate": False,
                    "max_logit_diff": 0.0 if ok else 1.7,
                    "answer_correct": ok if tiered else (dense_correct or [True] * n)[i],
                    "logical_tokens": context * 4,
                    "stored_tokens": int(context * 4 / comp),
                    "compression": comp,
                    "stored_fraction": 1.0 / comp,
                    "ttft_s": 0.1 * (ttft * jitter() if tiered else 1.0),
                    "tpot_s": 0.002 * (tpot * jitter() if tiered else 1.0),
                    "ttft_ratio": ttft * jitter() if tiered else 1.0,
                    "tpot_ratio": tpot * jitter() if tiered else 1.0,
                    "ttft_ratio_static": ttft * jitter() if tiered else 1.0,
                    "tpot_ratio_static": (tpot if tpot_static is None else tpot_static) * jitter()
                    if tiered
                    else 1.0,
                    "kv_bytes_stored": int(kv_dense / comp),
                    "kv_bytes_peak": int(kv_dense * (kj := kv_ratio * jitter() if tiered else 1.0)),
                    # the decode-phase peak: the same draw, scaled to its own ratio
                    "kv_bytes_peak_decode": int(kv_dense * (kj * decode_ratio / kv_ratio if tiered else 1.0)),
                    "peak_mem_bytes": None
                    if peak_ratio is None
                    else int(peak_dense * (peak_ratio * jitter() if tiered else 1.0)),
                }
            )
    df = pd.DataFrame(rows, columns=TIERED_COLUMNS)
    # the harness's diagnostic column: which layers the tiered run compressed (4-layer tiny model)
    band = BAND_LAYERS.get(setting, [1, 2])
    df["band_layers"] = [band if p != "dense" else [] for p in df["decode_path"]]
    df["peak_mem_bytes"] = df["peak_mem_bytes"].astype("Int64")
    df["first_divergence"] = df["first_divergence"].astype("Int64")
    return with_prov(df, model=model)


def write_model(root: Path) -> None:
    card = {
        "name": "tiny-needle",
        "source": "local",
        "hub_id": None,
        "dtype": "float32",
        "attn_implementation": "sdpa",
        "parameters": 1_100_000,
        "layers": 4,
        "kv_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 16384,
        "accuracy": [
            {"workload": "needle", "context": c, "n": 32, "accuracy": 1.0, "metric": "teacher_forced_answer"}
            for c in CONTEXTS
        ],
        "provenance": PROV,
    }
    io.write_json(card, root / "model" / card["name"] / "card.json")
    acc = pd.DataFrame(card["accuracy"])
    io.write_parquet(with_prov(acc), root / "model" / card["name"] / "accuracy.parquet")


def write_dense(root: Path, n: int = 8) -> None:
    for c in CONTEXTS:
        df = pd.DataFrame(
            {
                "prompt_id": [f"p{c}-{i:03d}" for i in range(n)],
                "workload": "needle",
                "context": c,
                "prompt_tokens": c,
                "output_ids": [[10, 11, 12, 5]] * n,
                "n_generated": 4,
                "answer_correct": True,
                "ttft_s": 0.05 * c / 2048,
                "tpot_s": 0.002,
                "kv_bytes": 4096 * c,
                "peak_mem_bytes": pd.array([None] * n, dtype="Int64"),
                "peak_prefill_bytes": pd.array([None] * n, dtype="Int64"),
                "peak_decode_bytes": pd.array([None] * n, dtype="Int64"),
                "repeats": 3,
            }
        )
        io.write_parquet(with_prov(df), root / "dense" / "needle" / f"{c}.parquet")


SWEEP = {
    "middle": dict(exact=False, compression=2.0),
    "middle_ret35": dict(exact=False, compression=1.9),
    "middle_phantom8": dict(exact=True, compression=1.6),
    "front_ret25": dict(exact=True, compression=2.3),
    "keep_all": dict(exact=True, compression=1.0, ttft=1.05, tpot=1.02, kv_ratio=1.0),
}


def write_tiered(
    root: Path,
    *,
    promotion: dict[str, dict] | None = None,
    sweep: dict[str, dict] | None = None,
    contexts: list[int] = CONTEXTS,
    modes: tuple[str, ...] = QUERY_MODES,
) -> None:
    """Per mode: the sweep at ``contexts[0]``; ``promotion`` maps setting -> tiered_frame kwargs at
    the other contexts (the same numbers in every mode)."""
    sweep = SWEEP if sweep is None else sweep
    promoted = [s for s, kw in sweep.items() if kw["exact"] is True]
    if promotion is None:
        promotion = {s: {k: v for k, v in sweep[s].items() if k != "exact"} for s in promoted}
    for mode in modes:
        frames = []
        for setting, kw in sweep.items():
            kw = dict(kw)
            ex = kw.pop("exact")
            flags = ex if isinstance(ex, list) else [True] * 7 + [ex]
            frames.append(tiered_frame(setting, contexts[0], exact=flags, mode=mode, **kw))
        io.write_parquet(
            pd.concat(frames, ignore_index=True), root / "tiered" / "needle" / "sweep" / f"{mode}.parquet"
        )
        io.write_json(
            {"context": contexts[0], "promoted": promoted, "run": promoted, "query_mode": mode},
            root / "tiered" / "needle" / "promoted" / f"{mode}.json",
        )
        for c in contexts[1:]:
            frames = [tiered_frame(s, c, mode=mode, **kw) for s, kw in promotion.items()]
            if frames:
                io.write_parquet(
                    pd.concat(frames, ignore_index=True),
                    root / "tiered" / "needle" / "promotion" / mode / f"{c}.parquet",
                )


def write_controls(
    root: Path,
    *,
    setting: str = "front_ret25",
    own: bool | list[bool] = True,
    controls: dict[str, list[bool]] | None = None,
    contexts: list[int] = (CONTEXTS[0], CONTEXTS[-1]),
    modes: tuple[str, ...] = QUERY_MODES,
    compression: float = 1.9,
    append: bool = False,
) -> None:
    """Negative controls matched to ``setting``: its own rows and each control's exact flags per prompt
    (``append``: added to the controls already written)."""
    controls = (
        {"recent_only": [False] * 7 + [True], "random_pages": [False] * 8} if controls is None else controls
    )
    for mode in modes:
        for c in contexts:
            frames = []
            for kind, flags in [(None, own), *controls.items()]:
                f = tiered_frame(
                    f"{kind}~{setting}" if kind else setting,
                    c,
                    paths=("densify",),
                    exact=flags,
                    compression=compression,
                    mode=mode,
                )
                f["control"], f["matched_to"] = kind, setting
                frames.append(f)
            path = root / "tiered" / "needle" / "controls" / mode / f"{c}.parquet"
            if append and path.is_file():
                frames.insert(0, pd.read_parquet(path))
            io.write_parquet(pd.concat(frames, ignore_index=True), path)


SCHEDULER_OPS = {"match": 27.0, "lock": 2.0, "path": 6.0, "checkpoint": 40.0, "insert": 37.0,
                 "release": 9.0, "evict": 12.0, "request": 90.0}  # fmt: skip
PLAIN_OPS = {"match": 20.0, "path": 6.0, "insert": 30.0, "evict": 12.0, "request": 56.0}


def write_cache_ops(
    root: Path,
    *,
    bcr_factor: float = 0.8,
    n: int = 500,
    slow: tuple[str, str, float] | None = None,
    drop: tuple[str, str] | None = None,
    spread: float = 0.02,
) -> None:
    """Every op of the scheduler's workloads and of one plain caller, at pages 1 and 16.

    ``slow`` = (workload, op, factor) makes bcr that much slower on one cell; ``drop`` = (workload, op)
    leaves one op out for bcr (a bench that forgot to time it); each p50's bounds are ``spread``
    either side of it."""
    arms = {"bcr": bcr_factor, "radix": 0.9, "unified_python": 1.6, "unified_rust": 1.0}
    workloads = {w: SCHEDULER_OPS for w in ("system_repeat", "rag_fanout", "longctx")}
    workloads["system_repeat:plain"] = PLAIN_OPS
    rows = []
    for workload, ops in workloads.items():
        for page in (1, 16):
            for op, us in ops.items():
                for arm, f in arms.items():
                    if arm == "bcr" and drop == (workload, op):
                        continue
                    if arm == "bcr" and slow is not None and slow[:2] == (workload, op):
                        f = slow[2]
                    rows.append(
                        {
                            "arm": arm,
                            "workload": workload,
                            "page_size": page,
                            "op": op,
                            "n": n,
                            "us_p50": us * f,
                            "us_p50_lo": us * f * (1 - spread),
                            "us_p50_hi": us * f * (1 + spread),
                            "us_p99": us * f * 3.0,
                        }
                    )
    io.write_parquet(with_prov(pd.DataFrame(rows)), root / "serving" / "cache_ops.parquet")


def write_serving(
    root: Path,
    *,
    ratio: float = 1.09,
    n: int = 200,
    reuse_delta: int = 0,
    seed: int = 0,
    engine: str = "sglang",
) -> None:
    """Request rows of two arms on two workloads (the same requests, as the serving rule writes
    them), their force-miss runs, and the summary computed from them."""
    from bcr.serving.summary import summarise

    rng = np.random.default_rng(seed)
    frames = []
    for workload in ("system_repeat", "rag_fanout"):
        for force_miss in (False, True):
            base = np.exp(rng.normal(np.log(0.05), 0.1, n)) * (3.0 if force_miss else 1.0)
            for arm, f in (("radix", 1.0), ("bcr", ratio)):
                ttft = base * f * np.exp(rng.normal(0.0, 0.02, n))
                cached = np.full(n, 0 if force_miss else 1000)
                cached = cached + (reuse_delta if arm == "bcr" and not force_miss else 0) * (
                    np.arange(n) == 0
                )
                df = pd.DataFrame(
                    {
                        "workload": workload,
                        "arm": arm,
                        "request_id": [f"{workload}-{i}" for i in range(n)],
                        "prompt_tokens": 1100,
                        "cached_tokens": cached,
                        "ttft_s": ttft,
                        "e2e_s": ttft + 0.5,
                        "output_tokens": 16,
                        "error": pd.Series([None] * n, dtype="string"),
                        "engine": engine,
                        "force_miss": force_miss,
                        "order": np.arange(n),
                        "output_ids": [[5] * 16] * n,
                        "output_logprobs": [[-0.5] * 16] * n,
                    }
                )
                sub = ("force_miss/" if force_miss else "") + f"{workload}/{arm}.parquet"
                io.write_parquet(with_prov(df), root / "serving" / engine / sub)
                frames.append(df)
    summary = summarise(pd.concat(frames, ignore_index=True), bootstrap={"resamples": 500})
    io.write_parquet(with_prov(summary), root / "serving" / "summary.parquet")


def write_longctx(root: Path, *, n: int = 30, mismatches: int = 0) -> None:
    exact = [i >= mismatches for i in range(n)]
    df = pd.DataFrame(
        {
            "engine": "sglang",
            "prompt_id": list(range(n)),
            "arm": "bcr",
            "baseline": "radix",
            "asks": 2,
            "prompt_tokens": 30720,
            "exact": exact,
            "tokens_exact": exact,
            "logprobs_exact": exact,
            "first_divergent_ask": pd.array([None if e else 1 for e in exact], dtype="Int64"),
            "first_divergence": pd.array([None if e else 3 for e in exact], dtype="Int64"),
            "cached_tokens_arm": 11000,
            "cached_tokens_baseline": 11000,
            "reused_equals_cold_arm": True,
            "reused_equals_cold_baseline": True,
            "errors": 0,
            "cached_tokens_radix": 11000,
            "cached_tokens_bcr": 11000,
        }
    )
    io.write_parquet(with_prov(df), root / "correctness" / "longctx.parquet")


def write_decomposition(root: Path) -> None:
    """Two instrumented prompts per arm: dense, dense_static, and front_ret25 on each decode path."""
    rows = []
    arms = [("dense", "dense", 0.0, 0.0), ("dense_static", "dense_static", 0.0, 0.0)]
    arms += [("front_ret25", "densify", 0.004, 0.003), ("front_ret25", "paged", 0.0, 0.001)]
    for setting, path, rebuild, compress in arms:
        for pid in ("p0", "p1"):
            phases = {
                "prefill_forward": 0.020,
                "scoring": compress / 3,
                "phantoms": compress / 3,
                "surprise": compress / 6,
                "packing": compress / 6,
                "decode_attention": 0.001,
                "view_rebuild": rebuild,
                "decode_other": 0.002,
            }
            total = sum(phases.values())
            for phase, sec in phases.items():
                rows.append(
                    {
                        "setting": setting,
                        "workload": "needle",
                        "query_mode": "question_aware",
                        "context": 8192,
                        "prompt_id": pid,
                        "decode_path": path,
                        "phase": phase,
                        "seconds": sec,
                        "total_s": total,
                        "reference_s": total * 0.97,
                        "steps": 15,
                    }
                )
    io.write_parquet(with_prov(pd.DataFrame(rows)), root / "tiered" / "decomposition.parquet")


def write_peers(
    root: Path,
    *,
    ours_rate: float = 1.0,
    peer_rate: float = 0.5,
    n: int = 16,
    modes: tuple[str, ...] = ("question_aware", "question_agnostic"),
    error: str | None = None,
    peer_offset: int = 0,
    tpot: dict[str, float] | None = None,
) -> None:
    """The comparison file: ours and two presses at one matched setting, per mode, at 8192.  Each
    arm is exact on a run of ``rate * n`` prompts, ours from the first, the presses from
    ``peer_offset`` (so the same counts can agree prompt by prompt or not); ``tpot``: each arm's
    TPOT ratio to its own dense (1.0 unless given)."""
    rows = []
    for mode in modes:
        for press, rate in (("tiered", ours_rate), ("snapkv", peer_rate), ("streaming_llm", peer_rate / 2)):
            k = round(rate * n)
            start = 0 if press == "tiered" else peer_offset
            failed = error is not None and press != "tiered"
            for j in range(n):
                i = (j - start) % n  # exact when i < k
                rows.append(
                    {
                        "press": press,
                        "compression_ratio": 0.56,
                        "setting_matched": "front_ret25",
                        "target_stored_fraction": 0.44,
                        "query_mode": mode,
                        "workload": "needle",
                        "context": 8192,
                        "prompt_id": f"p{j}",
                        "stored_fraction": None if failed else 0.44,
                        "exact": None if failed else i < k,
                        "exact_answer": None if failed else i < k,
                        "first_divergence": None if failed or i < k else 3,
                        "answer_correct": None if failed else i < k,
                        "ttft_s": None if failed else 0.1,
                        "tpot_s": None if failed else 0.01,
                        "kv_bytes_stored": None if failed else 1000.0,
                        "hook_equal": None,
                        "pipeline_equal": True if press != "tiered" and i == 0 and not failed else None,
                        "dense_equal_main": None if press == "tiered" or failed else True,
                        "error": error if failed else None,
                        "masks": None if failed else False,
                        "effective_stored_fraction": None if failed else 0.44,
                        "ttft_ratio": None if failed else (tpot or {}).get(press, 1.0) * 1.15,
                        "tpot_ratio": None if failed else (tpot or {}).get(press, 1.0),
                    }
                )
    io.write_parquet(with_prov(pd.DataFrame(rows)), root / "peers" / "kvpress.parquet")


FRONTIER_POINTS = {  # grid point -> (knob, value, compression)
    "all_ret10_n1": ("base", "all_ret10_n1", 4.5),
    "all_ret10_n1:retain=0.05": ("retain", "0.05", 6.0),
    "all_ret10_n1:retain=0.5": ("retain", "0.5", 1.8),
    "all_ret10_n1:band=middle": ("band", "middle", 1.5),
}


def write_frontier(
    root: Path,
    model: str = "tiny-needle",
    workload: str = "needle",
    mode: str = "question_aware",
    exact: dict[str, bool | list[bool]] | None = None,
    n: int = 8,
    dense_correct: list[bool] | None = None,
) -> Path:
    """One (model, family, mode) frontier file: every point exact unless ``exact`` says otherwise."""
    frames = []
    for point, (knob, value, comp) in FRONTIER_POINTS.items():
        df = tiered_frame(
            point, CONTEXTS[0], n=n, paths=("densify",), exact=(exact or {}).get(point, True),
            compression=comp, noise=0.0, model=model, mode=mode, workload=workload,
        )  # fmt: skip
        frames.append(
            df.assign(knob=knob, knob_value=value, dense_answer_correct=dense_correct or [True] * n)
        )
    path = root / "tiered" / "frontier" / model / workload / f"{mode}.parquet"
    io.write_parquet(pd.concat(frames, ignore_index=True), path)
    return path


def write_default(root: Path) -> Path:
    """What the default pipeline produces: model, dense, tiered sweep + promotion, cache ops."""
    write_model(root)
    write_dense(root)
    write_tiered(root)
    write_controls(root)
    write_cache_ops(root)
    return root


def write_full(root: Path) -> Path:
    """Every evidence file, including those of future issues."""
    write_default(root)
    for model in ("tiny-needle", "tiny-gqa4"):
        for mode in ("question_aware", "question_agnostic"):
            write_frontier(
                root, model, "needle", mode, exact={"all_ret10_n1:retain=0.05": [True] * 7 + [False]}
            )
    write_serving(root)
    write_longctx(root)
    write_decomposition(root)
    write_peers(root)
    return root


def dump(obj: object) -> str:
    return json.dumps(obj, indent=1, default=str)


def build_site(root: Path, spec: ClaimFile, config: dict, reference: dict, repo: Path = REPO) -> Path:
    results = load_results(root)
    ledger = ledger_with_provenance(evaluate(spec, results, config), config)
    return build(repo, results, config, ledger, spec, reference)
