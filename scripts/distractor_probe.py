"""Can a tiny model learn the distractor family within the training budget?  A time-boxed probe.

The distractor family (several needles ``KEY k1 k2 VAL v1..v6`` whose keys share ``k1`` and whose
values come from the same bands, one asked) needs the model to match the key: the committed model
never learnt to (it finds each value token as the only one of its band).  This probe trains a model
from scratch on many supervised look-ups per sequence (every needle of a sequence queried once, in
a random order, after the context; the MQAR recipe) with a length curriculum, and writes its
accuracy curve.  It does not touch the pipeline: a model that learns the task would be committed
with its own rule, training report and hash; one that does not is reported with this curve.

    python scripts/distractor_probe.py --minutes 25 --out models/probes/distractor.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bcr import prompts
from bcr.io import write_json
from bcr.models import build_tiny_model


def sequence(rng: np.random.Generator, length: int, needles: int, spec: prompts.NeedleSpec):
    """``needles`` needles in filler, then each queried once: inputs, targets (-100 off the answers),
    and a mask of the first answer token of every query (the step only the key can decide)."""
    lo, mid = prompts.FIRST_CONTENT_TOKEN, spec.value_start
    k1 = int(rng.integers(lo, mid))
    k2 = rng.choice(np.setdiff1d(np.arange(lo, mid), [k1]), size=needles, replace=False)
    band = spec.value_band
    values = mid + band * np.arange(spec.value_len) + rng.integers(0, band, size=(needles, spec.value_len))
    blocks = [np.concatenate([[prompts.KEY, k1, k2[j], prompts.VAL], values[j]]) for j in range(needles)]
    filler = length - needles * spec.needle_len - 1
    if filler < 0:
        raise ValueError(f"{needles} needles do not fit in {length} tokens")
    cuts = np.sort(rng.integers(0, filler + 1, size=needles))
    parts, prev = [np.array([prompts.BOS])], 0
    for j, cut in enumerate(cuts):
        parts.append(rng.integers(lo, mid, size=cut - prev))
        parts.append(blocks[j])
        prev = cut
    parts.append(rng.integers(lo, mid, size=filler - prev))
    context = np.concatenate(parts)
    ids, targets, first = [context], [np.full(len(context), -100)], [np.zeros(len(context), bool)]
    for j in rng.permutation(needles):
        question = np.array([prompts.QUERY, k1, k2[j], prompts.VAL])
        answer = np.concatenate([values[j], [prompts.EOS]])
        ids += [question, answer]
        tgt = np.full(len(question) + len(answer), -100)
        tgt[len(question) - 1 : len(question) - 1 + len(answer)] = answer  # predicted one step early
        targets.append(tgt)
        f = np.zeros(len(tgt), bool)
        f[len(question) - 1] = True
        first.append(f)
    # targets sit one step early (at position t, the token at t + 1), so inputs need no shift
    return np.concatenate(ids), np.concatenate(targets), np.concatenate(first)


def batch(rng, size, length, needles, spec):
    xs, ys, ms = zip(*(sequence(rng, length, needles, spec) for _ in range(size)), strict=True)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(ms))


def accuracy(logits: torch.Tensor, y: torch.Tensor, first: torch.Tensor, spec) -> tuple[float, float]:
    """Whole-answer accuracy per query and first-token accuracy (the key-dependent step)."""
    pred = logits.argmax(-1)
    ok = (pred == y) | (y == -100)
    # each query's answer is answer_len consecutive targets starting at a first-token mark
    starts = first.nonzero()
    whole = [bool(ok[b, s : s + spec.answer_len].all()) for b, s in starts.tolist()]
    return float(np.mean(whole)), float((pred[first] == y[first]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = prompts.NeedleSpec()
    arch = dict(
        vocab_size=256, hidden_size=128, num_layers=args.layers, num_heads=args.heads,
        num_kv_heads=args.kv_heads, intermediate_size=512, rope_theta=1e6, max_position_embeddings=16384,
    )  # fmt: skip
    # curriculum: (length, needles per sequence, batch); move on at 90% whole-answer accuracy
    stages = [(64, 4, 32), (128, 6, 16), (256, 8, 8), (512, 8, 4), (1024, 8, 2)]
    rng = np.random.default_rng(args.seed)
    model = build_tiny_model(arch, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    deadline = time.perf_counter() + 60 * args.minutes
    curve, t0, step, stage_i, recent = [], time.perf_counter(), 0, 0, []
    while time.perf_counter() < deadline and stage_i < len(stages):
        length, needles, size = stages[stage_i]
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 100)
        x, y, first = batch(rng, size, length, needles, spec)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        whole, first_acc = accuracy(logits.detach(), y, first, spec)
        recent.append(whole)
        if step % 25 == 0:
            point = dict(
                step=step, seconds=round(time.perf_counter() - t0, 1), length=length, needles=needles,
                loss=round(float(loss.detach()), 4), answer_accuracy=round(float(np.mean(recent[-25:])), 3),
                first_token_accuracy=round(first_acc, 3), chance_first_token=round(1 / needles, 3),
            )  # fmt: skip
            curve.append(point)
            print(json.dumps(point), flush=True)
        if len(recent) >= 25 and np.mean(recent[-25:]) >= 0.9:
            stage_i, recent = stage_i + 1, []
        step += 1
        if math.isnan(float(loss.detach())):
            break
    report = dict(
        task="distractor (shared k1, value bands shared, every needle queried once per sequence)",
        arch=arch, lr=args.lr, seed=args.seed, threads=args.threads, minutes=args.minutes,
        stages=[dict(length=s[0], needles=s[1], batch=s[2]) for s in stages], stages_passed=stage_i,
        steps=step, seconds=round(time.perf_counter() - t0, 1), machine=platform.processor() or platform.machine(),
        torch=torch.__version__, curve=curve,
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out)


if __name__ == "__main__":
    main()
