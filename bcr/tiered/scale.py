"""Timing and memory at the study's shapes without its weights: a random-init model with
Qwen2.5-7B-Instruct's architecture on long random prompts, dense (``DynamicCache``, ``StaticCache``)
beside the tiered decode paths, in one process, interleaved.

What it can say: how long prefill, compression and a decode step take and how much memory they
hold at 8K-32K on the real shapes (bf16, 28 layers, 28 query / 4 KV heads), and where the time goes
(the decomposition).  What it cannot: exactness -- random weights give near-tied logits, so whether
a compressed run keeps dense's tokens is reported, never claimed.  The same code runs on CPU with
:data:`SHAPES` ``small`` (the test suite's rehearsal), so nothing here needs a GPU to be tested.
"""

from __future__ import annotations

import pandas as pd
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from bcr.contracts import DENSE_PATH, DENSE_STATIC_PATH
from bcr.measure import interleaved, max_present, median_present
from bcr.models import LoadedModel
from bcr.tiered.harness import decomposition_frame, decomposition_rows, instrumented, run_dense, run_tiered
from bcr.tiered.settings import TieredSetting

# Qwen2.5-7B-Instruct's config.json (Qwen2Config's own defaults differ: 32 layers, hidden 4096, ...).
SHAPES: dict[str, dict] = {
    "qwen2.5-7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    ),
    # the CPU rehearsal: the same code path at a size a test can afford (grouped-query, 4 layers)
    "small": dict(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    ),
}
QUESTION_TOKENS = 32  # the prompt's tail prefilled as its own chunk, as the prompt sets do

SCALE_COLUMNS = [
    "shape", "dtype", "setting", "context", "decode_path", "ttft_s", "tpot_s", "ttft_ratio",
    "tpot_ratio", "ttft_ratio_static", "tpot_ratio_static", "peak_prefill_bytes", "peak_decode_bytes",
    "weights_bytes", "kv_bytes_stored", "kv_bytes_peak_prefill", "stored_fraction", "tokens_equal_dense",
    "repeats",
]  # fmt: skip


def random_model(shape: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LoadedModel:
    """A randomly initialised Qwen2 model with ``SHAPES[shape]``, built on ``device`` (no download)."""
    s = dict(SHAPES[shape])
    theta = s.pop("rope_theta")
    config = Qwen2Config(
        **s,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model.to(dtype).eval()
    model.set_attn_implementation("sdpa")
    return LoadedModel(model=model, tokenizer=None, name=f"random-{shape}", eos_token_ids=[])


def random_prompt(context: int, vocab: int, seed: int, device: torch.device) -> tuple[torch.Tensor, int]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (1, context), generator=g)
    return ids.to(device), context - QUESTION_TOKENS


def measure(
    loaded: LoadedModel,
    shape: str,
    setting: TieredSetting,
    contexts: list[int],
    paths: list[str],
    max_new_tokens: int,
    repeats: int,
    device: torch.device,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per context, every arm (dense, dense_static, ``setting`` on each path, question-aware) timed
    in ``repeats`` rotating rounds plus one instrumented run each; rows and the decomposition."""
    kw = dict(max_new_tokens=max_new_tokens, eos_token_ids=[], stop_at_eos=False, keep_logits=False)
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    rows, phases = [], []
    for i, context in enumerate(contexts):
        ids, split = random_prompt(context, loaded.model.config.vocab_size, seed + i, device)
        arms = {
            DENSE_PATH: lambda ids=ids, split=split: run_dense(loaded, ids, kw, split),
            DENSE_STATIC_PATH: lambda ids=ids, split=split: run_dense(loaded, ids, kw, split, True),
        }
        for path in paths:
            arms[path] = lambda ids=ids, split=split, p=path: run_tiered(
                loaded, ids, setting, p, kw, None, "question_aware", split
            )
        for key, arm in list(arms.items()):
            arms["phases", key] = lambda arm=arm: instrumented(loaded, device, arm)
        timed = interleaved(arms, repeats, warmup=1 if i == 0 else 0, start=i)
        dense = {
            k: median_present([r.result.ttft_s for r in timed[k]]) for k in (DENSE_PATH, DENSE_STATIC_PATH)
        }
        dense_tpot = {k: median_present([r.result.tpot_s for r in timed[k]]) for k in dense}
        reference = timed[DENSE_PATH][0].result.tokens
        for key in [DENSE_PATH, DENSE_STATIC_PATH, *paths]:
            runs = timed[key]
            ttft = median_present([r.result.ttft_s for r in runs])
            tpot = median_present([r.result.tpot_s for r in runs])
            r0 = runs[0]
            rows.append(
                {
                    "shape": shape,
                    "dtype": dtype,
                    "setting": key if key in dense else setting.name,
                    "context": context,
                    "decode_path": key,
                    "ttft_s": ttft,
                    "tpot_s": tpot,
                    "ttft_ratio": ttft / dense[DENSE_PATH],
                    "tpot_ratio": tpot / dense_tpot[DENSE_PATH],
                    "ttft_ratio_static": ttft / dense[DENSE_STATIC_PATH],
                    "tpot_ratio_static": tpot / dense_tpot[DENSE_STATIC_PATH],
                    "peak_prefill_bytes": max_present([r.result.peak_prefill_bytes for r in runs]),
                    "peak_decode_bytes": max_present([r.result.peak_decode_bytes for r in runs]),
                    "weights_bytes": weights,
                    "kv_bytes_stored": r0.stored_bytes,
                    "kv_bytes_peak_prefill": r0.peak_bytes_prefill,
                    "stored_fraction": r0.stored_tokens / r0.logical_tokens,
                    "tokens_equal_dense": r0.result.tokens == reference,
                    "repeats": len(runs),
                }
            )
            prompt = {"workload": "random", "context": context, "prompt_id": f"random-{context}"}
            name = key if key in dense else setting.name
            phases += decomposition_rows(prompt, "question_aware", name, key, timed["phases", key], runs)
    df = pd.DataFrame(rows, columns=SCALE_COLUMNS)
    for c in ("peak_prefill_bytes", "peak_decode_bytes"):
        df[c] = df[c].astype("Int64")
    return df, decomposition_frame(phases)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The short table: per context and arm, TTFT/TPOT and their ratios, the CUDA peaks above the
    weights, KV bytes, and how much of the stored-token saving the decode peak really shows
    (``saving_realised`` = (dense decode peak - arm's) / ((1 - stored fraction) x dense KV bytes))."""
    out = []
    for context, g in df.groupby("context", sort=True):
        dense = g[g["decode_path"] == DENSE_STATIC_PATH].iloc[0]
        for r in g.itertuples():
            saved = (
                None
                if pd.isna(r.peak_decode_bytes) or pd.isna(dense.peak_decode_bytes)
                else int(dense.peak_decode_bytes) - int(r.peak_decode_bytes)
            )
            expected = (1 - r.stored_fraction) * dense.kv_bytes_stored
            out.append(
                {
                    "context": context,
                    "arm": r.decode_path,
                    "ttft_ms": r.ttft_s * 1e3,
                    "tpot_ms": r.tpot_s * 1e3,
                    "ttft_x_dyn": r.ttft_ratio,
                    "tpot_x_dyn": r.tpot_ratio,
                    "ttft_x_static": r.ttft_ratio_static,
                    "tpot_x_static": r.tpot_ratio_static,
                    "prefill_peak_mib": _mib_above(r.peak_prefill_bytes, r.weights_bytes),
                    "decode_peak_mib": _mib_above(r.peak_decode_bytes, r.weights_bytes),
                    "kv_mib": r.kv_bytes_stored / 2**20,
                    "stored": r.stored_fraction,
                    "saving_realised": saved / expected if saved is not None and expected > 0 else None,
                    "same_tokens": r.tokens_equal_dense,
                }
            )
    return pd.DataFrame(out)


def _mib_above(peak, weights: int) -> float | None:
    return None if pd.isna(peak) else (int(peak) - weights) / 2**20
