"""Train the tiny default model on the single-needle task with a length curriculum.

Why train at all: random weights make greedy outputs flip on near-ties, not on retrieval, so they
cannot tell an exact cache from a lossy one.  A model that must copy a value from a far-away needle
can.  RoPE length generalisation fails beyond 2-4x the trained length, so the curriculum ends at
the longest context the pipeline evaluates.  Loss is on the answer tokens only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from bcr import prompts
from bcr.models import build_tiny_model
from bcr.prompts import needle_spec  # noqa: F401  (the training code's spec, re-exported)


@dataclass
class StageLog:
    length: int
    steps: int
    seconds: float
    final_loss: float
    train_accuracy: float


@dataclass
class TrainingResult:
    model: torch.nn.Module
    stages: list[StageLog] = field(default_factory=list)


def _answer_logits(model, x: torch.Tensor, answer_len: int) -> torch.Tensor:
    out = model(input_ids=x, logits_to_keep=answer_len)
    return out.logits  # [B, answer_len, V]: predictions for each answer token


def _needle_step(model, rng, stage, spec, bf16):
    x, y = prompts.synthetic_batch(rng, stage["batch"], stage["length"], spec)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = _answer_logits(model, x_t, spec.answer_len)
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y_t.reshape(-1))
    hit = float((logits.argmax(-1) == y_t).all(-1).float().mean())  # whole answer right
    return loss, hit


def train(
    arch: dict, training: dict, spec: prompts.NeedleSpec, *, progress: bool = True, log_every: int = 0
) -> TrainingResult:
    """Run the curriculum; each stage stops early once its running accuracy reaches its target.

    ``training.precision`` chooses fp32 or bf16 autocast: bf16 is fast only where the CPU has native
    bf16 matmuls (it was 12x slower than fp32 on the 2-core AVX2 machines this pipeline targets).
    """
    rng = np.random.default_rng(training["seed"])
    model = build_tiny_model(arch, training["seed"])
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=training["lr"], weight_decay=training.get("weight_decay", 0.0)
    )
    result = TrainingResult(model=model)
    bf16 = training.get("precision", "float32") == "bfloat16"
    for stage in training["stages"]:
        t0 = time.perf_counter()
        target = stage.get("target_accuracy", 1.0)
        base_lr = stage.get("lr", training["lr"])
        steps = stage["max_steps"]
        warm = max(1, steps // 20)
        hits: list[float] = []
        bar = tqdm(range(steps), desc=f"train len={stage['length']}", disable=not progress, mininterval=5)
        step = 0
        loss_val = math.nan
        for step in bar:
            for g in opt.param_groups:  # linear warm-up, cosine decay within each stage
                g["lr"] = base_lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss, hit = _needle_step(model, rng, stage, spec, bf16)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_val = float(loss.detach())
            hits.append(hit)
            recent = float(np.mean(hits[-20:]))
            bar.set_postfix(loss=f"{loss_val:.3f}", acc=f"{recent:.2f}", refresh=False)
            if log_every and step % log_every == 0:
                print(
                    f"len={stage['length']} step={step} loss={loss_val:.3f} acc={recent:.2f}",
                    flush=True,
                )
            if len(hits) >= 20 and recent >= target:
                break
        result.stages.append(
            StageLog(
                stage["length"],
                step + 1,
                time.perf_counter() - t0,
                loss_val,
                float(np.mean(hits[-20:])),
            )
        )
    model.eval()
    return result


@torch.inference_mode()
def needle_accuracy(
    model, spec: prompts.NeedleSpec, context: int, n: int, seed: int, workload: str = "needle"
) -> float:
    """Teacher-forced exact-answer accuracy on ``n`` fresh prompts of length ``context`` and family
    ``workload`` (``needle`` or ``scattered``)."""
    if workload not in ("needle", "scattered"):
        raise ValueError(f"teacher-forced accuracy covers the synthetic families, not {workload!r}")
    rng = np.random.default_rng(prompts.workload_seed(workload, seed, context, 7))
    device = next(model.parameters()).device
    correct = 0
    for _ in range(n):
        x, y = prompts.synthetic_batch(rng, 1, context, spec, scattered=workload == "scattered")
        logits = _answer_logits(model, torch.from_numpy(x).to(device), spec.answer_len)
        correct += int((logits.argmax(-1).cpu() == torch.from_numpy(y)).all())
    return correct / n
