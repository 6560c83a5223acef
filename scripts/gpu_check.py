"""The project's GPU check: the CUDA branches CI cannot run, on the committed tiny model, in one process.

CI has no GPU, so the code that only runs on CUDA — device-synchronised clocks, CUDA peak memory (reset
between prefill and decode), sdpa's CUDA kernels under the tiered cache, bf16 — is exercised here, through
the same ``bcr`` commands the Snakemake rules call (one process: imports and CUDA start-up paid once):

* prompts at the default's 2K and 8K; the model card's teacher-forced needle accuracy measured on CUDA;
* the dense baseline (its determinism gate runs every prompt twice) in fp32 and bf16;
* tiered ``keep_all`` (must equal dense token for token), ``middle`` and ``front_ret25`` at 8K, fp32 and bf16.

Then the **scale** stage (:mod:`bcr.tiered.scale`): a random-init model with Qwen2.5-7B-Instruct's shapes
(bf16, no hub access needed) at 8K/16K/32K, ``front_ret25`` on densify and paged beside dense on
``DynamicCache`` and ``StaticCache``: TTFT, TPOT, prefill and decode ``max_memory_allocated``, KV bytes and
the latency decomposition, written to ``scale.parquet`` / ``scale_decomposition.parquet``; its table is
printed last.  Exactness on random weights is not a claim; timing and memory are.

It fails (exit 1) when keep_all is not exact, when a CUDA row has no peak memory, or when a command fails;
everything else is reported, not asserted (exactness of a lossy setting is a measurement).  Usage, from the
repository root on a CUDA machine:  ``python scripts/gpu_check.py --out results/gpu_check``;
``--only scale --scale-shape small --scale-contexts 512 1024 --device cpu`` rehearses the scale stage on a
CPU (the test suite does).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bcr import io  # noqa: E402
from bcr.cli import main as bcr  # noqa: E402

CONTEXTS = [2048, 8192]
SCALE_CONTEXTS = [8192, 16384, 32768]
SCALE_SETTING = "front_ret25"
SCALE_PATHS = ["densify", "paged"]
SETTINGS = ["keep_all", "middle", "front_ret25"]
DTYPES = ["float32", "bfloat16"]


def run(argv: list[str]) -> None:
    t0 = time.perf_counter()
    code = bcr(argv)
    print(f"[{time.perf_counter() - t0:6.1f}s] bcr {' '.join(argv[:2])} -> {code}", flush=True)
    if code != 0:
        raise SystemExit(f"gpu_check: `bcr {' '.join(argv)}` exited {code}")


def override(out: Path, dtype: str, device: str, n_prompts: int | None) -> Path:
    path = out / f"{device}_{dtype}.yaml"
    cfg: dict = {
        "runtime": {"device": device},
        "model": {"dtype": dtype},
        "tiered": {"repeats": 3, "timed_prompts": None},
    }
    if n_prompts is not None:
        cfg["prompts"] = {"n_prompts": n_prompts}
    path.write_text(yaml.safe_dump(cfg))
    return path


def summarize(out: Path, cuda: bool) -> bool:
    ok = True
    print("\n== dense (median over prompts) ==")
    for path in sorted(out.glob("dense_*.parquet")):
        df = io.read_parquet(path)
        print(
            f"{path.stem:24s} n={len(df)} answer_acc={df['answer_correct'].mean():.3f} "
            f"ttft={df['ttft_s'].median() * 1e3:.1f}ms tpot={df['tpot_s'].median() * 1e3:.2f}ms "
            f"peak_prefill={df['peak_prefill_bytes'].median()} peak_decode={df['peak_decode_bytes'].median()} "
            f"device={df['device'].iloc[0]} torch={df['torch'].iloc[0]}"
        )
        if cuda and df["peak_mem_bytes"].isna().any():
            ok = False
            print(f"FAIL {path.name}: CUDA rows without peak memory")
    print("\n== tiered @8192 (densify vs dense, interleaved) ==")
    for path in sorted(out.glob("tiered_*.parquet")):
        df = io.read_parquet(path)
        t = df[df["decode_path"] != "dense"]
        print(
            f"{path.stem:32s} exact={int(t['exact'].sum())}/{len(t)} C={t['compression'].median():.3f} "
            f"ttft x{t['ttft_ratio'].median():.2f} tpot x{t['tpot_ratio'].median():.2f} "
            f"answer_acc={t['answer_correct'].mean():.3f} peak={t['peak_mem_bytes'].median()} "
            f"first_div={sorted(set(t['first_divergence'].dropna().astype(int)))}"
        )
        if "keep_all" in path.stem and not bool(t["exact"].all()):
            ok = False
            print(f"FAIL {path.name}: keep_all is not exact on CUDA")
        if cuda and t["peak_mem_bytes"].isna().any():
            ok = False
            print(f"FAIL {path.name}: CUDA rows without peak memory")
    return ok


def scale(out: Path, device: str, shape: str, contexts: list[int], repeats: int, new_tokens: int) -> bool:
    """The scale stage: random weights at the study's shapes; prints its table, returns ok."""
    import pandas as pd
    import torch

    from bcr import config as cfgmod
    from bcr import provenance
    from bcr.runtime import setup_runtime
    from bcr.tiered import scale as sc
    from bcr.tiered.settings import resolve

    config = cfgmod.load(REPO / "config" / "config.yaml")
    config["runtime"]["device"] = device
    dev = setup_runtime(config["runtime"])
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    loaded = sc.random_model(shape, dev, dtype)
    print(f"[{time.perf_counter() - t0:6.1f}s] random {shape} model on {dev} ({dtype})", flush=True)
    rows, phases = sc.measure(
        loaded, shape, resolve(config, SCALE_SETTING), contexts, SCALE_PATHS, new_tokens, repeats, dev
    )
    provenance.write_rows(rows, out / "scale.parquet", config, dev)
    provenance.write_rows(phases, out / "scale_decomposition.parquet", config, dev)
    rows.to_csv(out / "scale.csv", index=False)
    print(f"[{time.perf_counter() - t0:6.1f}s] scale stage measured", flush=True)
    per = phases.pivot_table(index=["context", "decode_path"], columns="phase", values="seconds") * 1e3
    print("\n== scale: decomposition (ms per generation) ==")
    print(per.round(1).to_string())
    print(f"\n== scale: {shape}, {SCALE_SETTING}, {new_tokens} new tokens, {repeats} rounds ==")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(sc.summary(rows).round(3).to_string(index=False))
    ok = True
    if dev.type == "cuda" and rows[["peak_prefill_bytes", "peak_decode_bytes"]].isna().any().any():
        ok = False
        print("FAIL scale: CUDA rows without peak memory")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "results" / "gpu_check"))
    ap.add_argument("--device", default="cuda", help="cpu rehearses the script where there is no GPU")
    ap.add_argument("--n-prompts", type=int, help="prompts per context (default: the config's)")
    ap.add_argument("--only", choices=["tiny", "scale"], help="one stage (default: both)")
    ap.add_argument("--scale-shape", default="qwen2.5-7b", help="bcr.tiered.scale.SHAPES key")
    ap.add_argument("--scale-contexts", type=int, nargs="+", default=SCALE_CONTEXTS)
    ap.add_argument("--scale-repeats", type=int, default=3)
    ap.add_argument("--scale-new-tokens", type=int, default=32)
    args = ap.parse_args()
    out, device = Path(args.out), args.device
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ok = True
    if args.only != "scale":
        ok = tiny(out, device, args.n_prompts)
    if args.only != "tiny":
        ok = (
            scale(
                out, device, args.scale_shape, args.scale_contexts, args.scale_repeats, args.scale_new_tokens
            )
            and ok
        )
    print(f"\ngpu_check {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f}s")
    return 0 if ok else 1


def tiny(out: Path, device: str, n_prompts: int | None) -> bool:
    """The committed tiny model through the bcr commands (the first stage)."""
    base = str(REPO / "config" / "config.yaml")
    fp32 = str(override(out, "float32", device, n_prompts))
    for c in CONTEXTS:
        run(["prompts", "build", "--config", base, "--config", fp32, "--context", str(c),
             "--out", str(out / f"prompts_{c}.parquet")])  # fmt: skip
    run(["model", "card", "--config", base, "--config", fp32, "--out", str(out / "model_card.json"),
         "--accuracy", str(out / "accuracy.parquet")])  # fmt: skip
    for dtype in DTYPES:
        cfg = ["--config", base, "--config", str(override(out, dtype, device, n_prompts))]
        contexts = CONTEXTS if dtype == "float32" else CONTEXTS[-1:]
        for c in contexts:
            run(["dense", "run", *cfg, "--prompts", str(out / f"prompts_{c}.parquet"),
                 "--out", str(out / f"dense_{dtype}_{c}.parquet"), "--quiet"])  # fmt: skip
        c = CONTEXTS[-1]
        for s in SETTINGS if dtype == "float32" else SETTINGS[:2]:
            run(["tiered", "run", *cfg, "--settings", s, "--context", str(c),
                 "--prompts", str(out / f"prompts_{c}.parquet"),
                 "--dense", str(out / f"dense_{dtype}_{c}.parquet"),
                 "--out", str(out / f"tiered_{dtype}_{s}_{c}.parquet"), "--quiet"])  # fmt: skip
    return summarize(out, device == "cuda")


if __name__ == "__main__":
    raise SystemExit(main())
