"""Deterministic serving workloads as token traces, generated from the ``serving`` config section.

Four shapes of prefix reuse (DESIGN.md, "Exact-prefix serving"):

* ``system_repeat`` -- a few long system prompts, many distinct questions after them;
* ``system_prompts`` -- the same shape with many distinct long system prompts, each asked a few
  times (the study's reference shape: 64 system prompts of 8K tokens at page 16), so most requests
  insert or extend a prefix that is cold or cached once;
* ``rag_fanout`` -- document sets (a few documents drawn from a shared pool, concatenated), many
  questions per set;
* ``longctx`` -- prompts near the maximum context, each asked ``asks`` times.

Every request carries its prompt and the output tokens the cache-operation replay feeds back as
decode steps; a real server run sends the prompt as ``input_ids`` and ignores ``output``.  Token
ids are uniform in ``token_range`` and depend only on the config (a per-workload seed), so every
arm, page size and rerun sees identical traces.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

WORKLOADS = ("system_repeat", "system_prompts", "rag_fanout", "longctx")


@dataclasses.dataclass(frozen=True)
class TraceRequest:
    """One request of a trace; ``group`` names the shared prefix it reuses (system prompt, doc set, prompt)."""

    rid: str
    workload: str
    group: int
    prompt: np.ndarray
    output: np.ndarray

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.output)


def _rng(seed: int, workload: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(workload.encode())])


def _tokens(rng: np.random.Generator, n: int, token_range: tuple[int, int]) -> np.ndarray:
    return rng.integers(token_range[0], token_range[1], size=n, dtype=np.int64)


def _order(rng: np.random.Generator, groups: int, count: int) -> np.ndarray:
    """Group of each request: every group once in turn first (each starts cold), the rest shuffled."""
    head = np.arange(min(groups, count))
    tail = rng.integers(0, groups, size=max(0, count - groups))
    return np.concatenate([head, tail]).astype(np.int64)


def _system(name: str, cfg: dict, token_range: tuple[int, int], seed: int) -> list[TraceRequest]:
    rng = _rng(seed, name)
    systems = [_tokens(rng, cfg["system_len"], token_range) for _ in range(cfg["systems"])]
    out = []
    for i, g in enumerate(_order(rng, cfg["systems"], cfg["questions"])):
        prompt = np.concatenate([systems[g], _tokens(rng, cfg["question_len"], token_range)])
        out.append(
            TraceRequest(f"{name}-{i}", name, int(g), prompt, _tokens(rng, cfg["output_len"], token_range))
        )
    return out


def system_repeat(cfg: dict, token_range: tuple[int, int], seed: int) -> list[TraceRequest]:
    return _system("system_repeat", cfg, token_range, seed)


def system_prompts(cfg: dict, token_range: tuple[int, int], seed: int) -> list[TraceRequest]:
    return _system("system_prompts", cfg, token_range, seed)


def rag_fanout(cfg: dict, token_range: tuple[int, int], seed: int) -> list[TraceRequest]:
    rng = _rng(seed, "rag_fanout")
    docs = [_tokens(rng, cfg["doc_len"], token_range) for _ in range(cfg["documents"])]
    sets = []
    for _ in range(cfg["sets"]):
        pick = rng.choice(cfg["documents"], size=cfg["docs_per_set"], replace=False)
        sets.append(np.concatenate([docs[d] for d in pick]))
    out = []
    for i, g in enumerate(_order(rng, cfg["sets"], cfg["questions"])):
        prompt = np.concatenate([sets[g], _tokens(rng, cfg["question_len"], token_range)])
        out.append(
            TraceRequest(
                f"rag_fanout-{i}", "rag_fanout", int(g), prompt, _tokens(rng, cfg["output_len"], token_range)
            )
        )
    return out


def longctx(cfg: dict, token_range: tuple[int, int], seed: int) -> list[TraceRequest]:
    rng = _rng(seed, "longctx")
    prompts = [_tokens(rng, cfg["prompt_len"], token_range) for _ in range(cfg["prompts"])]
    out = []
    for ask in range(cfg["asks"]):
        for g, prompt in enumerate(prompts):
            i = ask * len(prompts) + g
            out.append(
                TraceRequest(
                    f"longctx-{i}", "longctx", g, prompt, _tokens(rng, cfg["output_len"], token_range)
                )
            )
    return out


BUILDERS = {
    "system_repeat": system_repeat,
    "system_prompts": system_prompts,
    "rag_fanout": rag_fanout,
    "longctx": longctx,
}


def build_workload(name: str, serving: dict) -> list[TraceRequest]:
    if name not in BUILDERS:
        raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")
    low, high = serving["token_range"]
    return BUILDERS[name](serving["workloads"][name], (int(low), int(high)), int(serving["seed"]))


def build_workloads(serving: dict) -> dict[str, list[TraceRequest]]:
    """Every workload the config lists, in :data:`WORKLOADS` order."""
    return {name: build_workload(name, serving) for name in WORKLOADS if name in serving["workloads"]}


def max_request_len(name: str, cfg: dict) -> int:
    """Longest prompt + output of a workload, from its settings alone."""
    if name in ("system_repeat", "system_prompts"):
        return cfg["system_len"] + cfg["question_len"] + cfg["output_len"]
    if name == "rag_fanout":
        return cfg["docs_per_set"] * cfg["doc_len"] + cfg["question_len"] + cfg["output_len"]
    return cfg["prompt_len"] + cfg["output_len"]


def check_config(config: dict) -> list[tuple[str, Any]]:
    """Cross-field checks of the ``serving`` section (registered in ``bcr.config.TRACK_CHECKS``)."""
    serving = config.get("serving")
    if serving is None:
        return []
    problems: list[tuple[str, Any]] = []
    low, high = serving["token_range"]
    if low >= high:
        problems.append(("serving.token_range", f"empty range [{low}, {high})"))
    vocab = config.get("model", {}).get("architecture", {}).get("vocab_size")
    if vocab is not None and high > vocab:
        problems.append(("serving.token_range", f"upper bound {high} exceeds model vocab_size {vocab}"))
    for name in serving.get("cache_ops", {}).get("plain", []):
        if name not in serving["workloads"]:
            problems.append(("serving.cache_ops.plain", f"{name!r} is not a workload of this config"))
    run = serving.get("run", {})
    for name in run.get("workloads", []):
        if name not in serving["workloads"]:
            problems.append(("serving.run.workloads", f"{name!r} is not a workload of this config"))
    for name in run.get("force_miss", []):
        if name not in run.get("workloads", []):
            problems.append(("serving.run.force_miss", f"{name!r} is not one of serving.run.workloads"))
    corr = serving.get("correctness")
    if corr is not None:
        if corr["arm"] == corr["baseline"]:
            problems.append(("serving.correctness", f"arm and baseline are both {corr['arm']!r}"))
        if "longctx" not in serving["workloads"]:
            problems.append(("serving.correctness", "needs the longctx workload under serving.workloads"))
    if (serving.get("run") or corr) and serving.get("engine", "local") == "local" and "local" not in serving:
        problems.append(("serving.local", "the local engine needs its pool size (serving.local.kv_tokens)"))
    max_context = config.get("model", {}).get("max_context")
    for name, cfg in serving["workloads"].items():
        if name == "rag_fanout" and cfg["docs_per_set"] > cfg["documents"]:
            problems.append(
                (f"serving.workloads.{name}.docs_per_set", f"exceeds documents ({cfg['documents']})")
            )
        longest = max_request_len(name, cfg)
        if max_context is not None and longest > max_context:
            problems.append(
                (
                    f"serving.workloads.{name}",
                    f"requests reach {longest} tokens > model.max_context {max_context}",
                )
            )
    return problems
