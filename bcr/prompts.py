"""Deterministic long-context retrieval prompts: one needle (key -> value) hidden in filler.

The answer lives in a few specific far-away tokens, so greedy outputs depend on a few distant pages:
the property that exactness under KV compression has to survive.  Two renderings of the same task:

* ``synthetic`` — the tiny default model's integer vocabulary (no tokenizer, fully offline);
* ``text`` — natural filler sentences through a real tokenizer (the cluster's Qwen chat template).

Needle depths are spread evenly over the prompt set (0.5/n, 1.5/n, ...), so every set covers
shallow, middle and deep needles; the rest (filler, key, value) comes from a seeded generator.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bcr.contracts import PROMPT_COLUMNS, PROMPT_WORKLOADS, WORKLOAD

# Synthetic vocabulary: a handful of control tokens, then content tokens.
PAD, BOS, KEY, VAL, QUERY, EOS = 0, 1, 2, 3, 4, 5
FIRST_CONTENT_TOKEN = 16


@dataclass(frozen=True)
class NeedleSpec:
    """Shape of the synthetic needle: ``KEY k1..kK VAL v1..vV`` hidden, ``QUERY k1..kK VAL`` asked."""

    vocab_size: int = 256
    key_len: int = 2
    value_len: int = 6
    # Value token i comes from its own band of [vocab/2, vocab), a band never used by the
    # filler.  Each answer step is then one content-addressed look-up of a far-away token (the only
    # token of band i in the prompt), which a small model learns in minutes on 2 CPU cores; with
    # values drawn from the filler's range (a two-layer induction circuit needed) it sat at chance
    # for 1000+ steps.  The answer still lives only in the needle's page(s).

    @property
    def value_start(self) -> int:
        return self.vocab_size // 2

    @property
    def value_band(self) -> int:
        return (self.vocab_size - self.value_start) // self.value_len

    @property
    def needle_len(self) -> int:
        return 2 + self.key_len + self.value_len

    @property
    def query_len(self) -> int:
        return 2 + self.key_len

    @property
    def answer_len(self) -> int:
        return self.value_len + 1  # the value, then EOS


@dataclass(frozen=True)
class SyntheticExample:
    input_ids: np.ndarray  # int64 [context]
    answer_ids: np.ndarray  # int64 [answer_len]
    needle_start: int
    needle_end: int
    value_positions: list[int]  # where each value token sits


def synthetic_example(
    rng: np.random.Generator,
    context: int,
    spec: NeedleSpec,
    depth: float | None = None,
    scattered: bool = False,
) -> SyntheticExample:
    """One prompt of exactly ``context`` tokens; ``depth`` in [0, 1] places the needle (random if None).

    ``scattered``: the needle keeps its key and first value token (``KEY k1..kK VAL v1``) and every
    further value token sits alone at its own random position elsewhere in the context, so the answer
    needs several far-apart pages (each value token is still the only one of its band in the prompt).
    """
    min_len = 1 + spec.needle_len + spec.query_len
    if context < min_len:
        raise ValueError(f"context {context} is shorter than the needle task needs ({min_len})")
    lo, mid, hi = FIRST_CONTENT_TOKEN, spec.value_start, spec.vocab_size
    ids = rng.integers(lo, mid, size=context, dtype=np.int64)
    ids[0] = BOS
    key = rng.integers(lo, mid, size=spec.key_len, dtype=np.int64)
    band = spec.value_band
    if band < 1:
        raise ValueError(f"vocab_size {hi} leaves no value band for {spec.value_len} value tokens from {mid}")
    value = mid + band * np.arange(spec.value_len) + rng.integers(0, band, size=spec.value_len)
    last_start = context - spec.query_len - spec.needle_len
    frac = rng.random() if depth is None else depth
    start = 1 + round(frac * (last_start - 1))
    kept = spec.value_len if not scattered else 1
    needle = np.concatenate([[KEY], key, [VAL], value[:kept]])
    ids[start : start + len(needle)] = needle
    positions = list(range(start + 2 + spec.key_len, start + len(needle)))
    if scattered and spec.value_len > 1:
        free = np.setdiff1d(np.arange(1, context - spec.query_len), np.arange(start, start + len(needle)))
        rest = rng.choice(free, size=spec.value_len - 1, replace=False)
        ids[rest] = value[1:]
        positions += [int(p) for p in rest]
    ids[context - spec.query_len :] = np.concatenate([[QUERY], key, [VAL]])
    answer = np.concatenate([value, [EOS]])
    return SyntheticExample(ids, answer, start, start + len(needle), positions)


def synthetic_batch(
    rng: np.random.Generator, batch: int, context: int, spec: NeedleSpec, scattered: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Training batch: inputs [B, context + answer_len - 1] and the answer targets [B, answer_len]."""
    xs, ys = [], []
    for _ in range(batch):
        ex = synthetic_example(rng, context, spec, scattered=scattered)
        xs.append(np.concatenate([ex.input_ids, ex.answer_ids[:-1]]))
        ys.append(ex.answer_ids)
    return np.stack(xs), np.stack(ys)


def evenly_spread_depths(n: int) -> list[float]:
    return [(i + 0.5) / n for i in range(n)]


def workload_seed(workload: str, *base: int) -> list[int]:
    """``base`` for the needle family (the seeds its sets always had), ``base`` plus the family's index
    for every other family, so each family draws its own prompts."""
    if workload not in PROMPT_WORKLOADS:
        raise ValueError(f"unknown prompt workload {workload!r} (known: {', '.join(PROMPT_WORKLOADS)})")
    return list(base) if workload == "needle" else [*base, PROMPT_WORKLOADS.index(workload)]


def _workload_rng(seed: int, context: int, workload: str) -> np.random.Generator:
    return np.random.default_rng(workload_seed(workload, seed, context))


def synthetic_prompt_set(
    context: int, n: int, seed: int, spec: NeedleSpec, workload: str = "needle"
) -> pd.DataFrame:
    """The evaluation set for one context length and family (seeded by (seed, context[, family]))."""
    if workload == "distractor":
        raise ValueError(
            "the synthetic renderer has no distractor family: the committed tiny model ignores the key "
            "(it answers the value band), so a second needle could not be told apart (issue: harder workloads)"
        )
    rng = _workload_rng(seed, context, workload)
    rows = []
    for i, depth in enumerate(evenly_spread_depths(n)):
        ex = synthetic_example(rng, context, spec, depth=depth, scattered=workload == "scattered")
        rows.append(
            {
                "prompt_id": _prompt_id(context, i, workload),
                "context": context,
                "input_ids": ex.input_ids.tolist(),
                "answer_ids": ex.answer_ids.tolist(),
                "answer_text": " ".join(map(str, ex.answer_ids.tolist())),
                "needle_start": ex.needle_start,
                "needle_end": ex.needle_end,
                "question_start": context - spec.query_len,
                "depth": depth,
                "renderer": "synthetic",
                WORKLOAD: workload,
                "value_positions": ex.value_positions,
            }
        )
    return pd.DataFrame(rows, columns=PROMPT_COLUMNS)


def _prompt_id(context: int, i: int, workload: str) -> str:
    """``c2048-p003`` for the needle family (as always), ``c2048-scattered-p003`` for the others."""
    return f"c{context}-p{i:03d}" if workload == "needle" else f"c{context}-{workload}-p{i:03d}"


# --- natural-text rendering (cluster: real tokenizer, chat template) -------------------------------

_SUBJECTS = [
    "The committee",
    "A traveller",
    "The old lighthouse keeper",
    "Our neighbour",
    "The river pilot",
    "A young engineer",
    "The librarian",
    "The harbour master",
    "A quiet gardener",
    "The night baker",
]
_VERBS = [
    "noted",
    "remembered",
    "described",
    "wrote about",
    "argued about",
    "walked past",
    "repaired",
    "photographed",
    "measured",
    "sketched",
]
_OBJECTS = [
    "the northern bridge",
    "a field of barley",
    "the copper roof",
    "an empty market square",
    "the tide tables",
    "a broken weather vane",
    "the long stone wall",
    "a stack of ledgers",
    "the orchard gate",
    "the signal tower",
]
_TAILS = [
    "before the rain started.",
    "on a grey Tuesday morning.",
    "with unusual care.",
    "while the bells were ringing.",
    "for the third time that year.",
    "without saying a word.",
    "as the ferry left the pier.",
    "in the fading afternoon light.",
    "after the long winter.",
    "during the annual fair.",
]
_VAULTS = [
    "amber",
    "basalt",
    "cedar",
    "delta",
    "ember",
    "falcon",
    "granite",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lantern",
    "meadow",
    "nickel",
    "onyx",
    "pepper",
    "quartz",
    "raven",
    "saffron",
    "tundra",
]


def _filler_sentences(rng: np.random.Generator) -> Iterator[str]:
    while True:
        parts = (_SUBJECTS, _VERBS, _OBJECTS, _TAILS)
        yield " ".join(p[rng.integers(len(p))] for p in parts)


_ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth"]
DISTRACTOR_VAULTS = 4  # needles per distractor prompt, one of them queried


def _text_needles(
    rng: np.random.Generator, depth: float, workload: str
) -> tuple[list[tuple[float, str]], str, str]:
    """(the (depth, sentence) inserts, the question, the answer) of one text prompt.

    ``needle``: one pass-code sentence.  ``scattered``: the code's six digits, each in its own
    sentence at its own depth (one at ``depth``).  ``distractor``: several vaults' codes at different
    depths, one of them asked for, so keeping the wrong page gives a plausible wrong code.
    """
    vault = _VAULTS[rng.integers(len(_VAULTS))]
    code = str(rng.integers(100000, 999999))
    question = f"What is the pass code of the {vault} vault? Answer with the number only."
    if workload == "needle":
        return [(depth, f" The pass code of the {vault} vault is {code}. ")], question, code
    if workload == "scattered":
        others = rng.random(len(code) - 1).tolist()
        depths = [depth, *others]
        inserts = [
            (d, f" The {_ORDINALS[i]} digit of the {vault} vault's pass code is {c}. ")
            for i, (d, c) in enumerate(zip(depths, code, strict=True))
        ]
        return inserts, question, code
    if workload == "distractor":
        names = [vault, *rng.choice([v for v in _VAULTS if v != vault], DISTRACTOR_VAULTS - 1, replace=False)]
        codes = [code, *(str(rng.integers(100000, 999999)) for _ in names[1:])]
        depths = [depth, *rng.random(len(names) - 1).tolist()]
        inserts = [
            (d, f" The pass code of the {n} vault is {c}. ")
            for d, n, c in zip(depths, names, codes, strict=True)
        ]
        return inserts, question, code
    raise ValueError(f"unknown prompt workload {workload!r} (known: {', '.join(PROMPT_WORKLOADS)})")


def text_prompt_set(
    tokenizer, context: int, n: int, seed: int, max_new_tokens: int, workload: str = "needle"
) -> pd.DataFrame:
    """Needle-in-filler prompts rendered with ``tokenizer``'s chat template.

    The prompt is sized so that prompt + ``max_new_tokens`` fits in ``context`` (the note's 32K run
    overran the model's length by its generation steps; we budget for them up front).
    """
    rng = _workload_rng(seed, context, workload)
    budget = context - max_new_tokens
    rows = []
    for i, depth in enumerate(evenly_spread_depths(n)):
        inserts, question, code = _text_needles(rng, depth, workload)
        order = sorted(range(len(inserts)), key=lambda j: inserts[j][0])
        queried = order.index(0)  # _text_needles puts the queried sentence first
        inserts = [inserts[j] for j in order]

        def render(filler_ids: list[int], *, inserts=inserts, question=question) -> list[int]:
            cuts = [0, *(round(d * len(filler_ids)) for d, _ in inserts), len(filler_ids)]
            parts = [tokenizer.decode(filler_ids[a:b]) for a, b in itertools.pairwise(cuts)]
            doc = parts[0] + "".join(text + part for (_, text), part in zip(inserts, parts[1:], strict=True))
            msgs = [{"role": "user", "content": f"{doc}\n\n{question}"}]
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            return tokenizer.encode(text, add_special_tokens=False)

        fixed = len(render([]))
        sentences = _filler_sentences(rng)
        filler: list[int] = []
        while len(filler) < budget - fixed:
            filler.extend(tokenizer.encode(" " + next(sentences), add_special_tokens=False))
        filler = filler[: max(0, budget - fixed)]
        # Trim until the rendered prompt fits (detokenise/retokenise can merge tokens either way).
        while True:
            ids = render(filler)
            if len(ids) <= budget:
                break
            filler = filler[: len(filler) - (len(ids) - budget) - 1]
        found = []
        for _, text in inserts:
            sent = tokenizer.encode(text.strip(), add_special_tokens=False)
            at = _find_subsequence(ids, sent[1:-1]) if len(sent) > 2 else -1
            found.append((at, at + len(sent) if at >= 0 else -1))
        start, end = found[queried]
        rows.append(
            {
                "prompt_id": _prompt_id(context, i, workload),
                "context": context,
                "input_ids": ids,
                "answer_ids": tokenizer.encode(code, add_special_tokens=False),
                "answer_text": code,
                "needle_start": start,
                "needle_end": end,
                "question_start": _question_start(tokenizer, ids, question),
                "depth": depth,
                "renderer": "text",
                WORKLOAD: workload,
                # the sentences holding the answer: the queried one, or every digit's (scattered)
                "value_positions": [a for a, _ in (found if workload == "scattered" else [found[queried]])],
            }
        )
    return pd.DataFrame(rows, columns=PROMPT_COLUMNS)


def question_split(prompt: dict) -> int | None:
    """Where a prompt row's question starts (prefill in two chunks: context, then question); None for a
    row without one (a prompt file written before the column existed)."""
    q = prompt.get("question_start")
    if q is None or pd.isna(q):
        return None
    q = int(q)
    return q if 0 < q < len(prompt["input_ids"]) else None


def _question_start(tokenizer, ids: list[int], question: str) -> int:
    """Where the question's tokens begin in the rendered prompt (its first token may merge with the
    preceding newlines, so the search uses the tokens after it and steps back one)."""
    q = tokenizer.encode(question, add_special_tokens=False)
    at = _find_subsequence(ids, q[1:]) if len(q) > 1 else -1
    if at <= 0:
        raise ValueError(f"question {question!r} not found in the rendered prompt")
    return at - 1


def _find_subsequence(seq: list[int], sub: list[int]) -> int:
    n = len(sub)
    for i in range(len(seq) - n + 1):
        if seq[i : i + n] == sub:
            return i
    return -1


def answer_span(reference: list[int], row: pd.Series | dict, tokenizer=None) -> int:
    """How many leading tokens of a reference trajectory make up its answer (the note's claim is about
    these; the continuation after them is the stronger, whole-trajectory test).

    Synthetic: the value and EOS.  Text: the shortest prefix whose decoded text holds the answer, or
    the whole trajectory when it never does.
    """
    if row["renderer"] == "synthetic":
        return min(len(row["answer_ids"]), len(reference))
    if tokenizer is None:
        raise ValueError("a text prompt needs its tokenizer to find the answer span")
    for k in range(1, len(reference) + 1):
        if str(row["answer_text"]) in tokenizer.decode(reference[:k], skip_special_tokens=True):
            return k
    return len(reference)


def answer_correct(generated: list[int], row: pd.Series | dict, tokenizer=None) -> bool:
    """Synthetic: the value and EOS come out first, token for token.  Text: the code appears in the reply."""
    if row["renderer"] == "synthetic":
        answer = list(row["answer_ids"])
        return list(generated[: len(answer)]) == answer
    if tokenizer is None:
        raise ValueError("a text prompt needs its tokenizer to judge the answer")
    return str(row["answer_text"]) in tokenizer.decode(generated, skip_special_tokens=True)


def needle_spec(prompt_cfg: dict, arch: dict) -> NeedleSpec:
    """The needle task of a config (``prompts.needle``) over a model's vocabulary."""
    needle = prompt_cfg.get("needle", {})
    return NeedleSpec(
        vocab_size=arch["vocab_size"], key_len=needle.get("key_len", 2), value_len=needle.get("value_len", 6)
    )
