"""Verdict rules: each turns one claim's evidence table into ``supported`` / ``rejected`` / ``not yet``.

The rule kinds (``kind:`` in config/claims.yaml):

* ``ratio`` — per-prompt ratios of one tiered setting, geometric mean with a seeded bootstrap
  interval; the whole interval must sit on the claimed side of the threshold.
* ``quantile_ratio`` — a latency quantile of two serving arms (paired by request where both served the
  same requests, unpaired otherwise; per workload), only where
  both arms reused the same number of tokens (a fair comparison).
* ``all_exact`` — every checked prompt exact; ``exists_exact_setting`` — some tiered setting exact
  on every prompt at every promotion context.
* ``ops_ratio`` — cache-operation p50s of two arms, each cell bounded by the two p50s' order-statistic
  intervals (the table holds quantiles, not samples).
* ``coverage`` — the exactness result per (model, workload): generalisation needs several of each.
* ``peer_exact`` — ours against each kvpress press at a matched stored fraction, paired by prompt
  (exact McNemar on the discordant prompts).

A mismatch is conclusive at any sample size (one counterexample refutes "always exact"); every
other verdict needs the rule's ``min_n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bcr import contracts as C
from bcr import headline as hl
from bcr.ledger import tables
from bcr.ledger.evidence import Results
from bcr.ledger.stats import (
    Interval,
    discordant_p,
    exact_rate_interval,
    geomean_interval,
    p50_ratio_interval,
    paired_quantile_ratio_interval,
    quantile_ratio_interval,
    rate_text,
    sig,
)

SUPPORTED, REJECTED, NOT_YET = "supported", "rejected", "not yet"
VERDICTS = (SUPPORTED, REJECTED, NOT_YET)

METRIC_LABELS = {
    "compression": "stored-token compression",
    "ttft_ratio": "TTFT tiered/dense",
    "tpot_ratio": "TPOT tiered/dense",
    "ttft_ratio_static": "TTFT tiered/dense StaticCache",
    "tpot_ratio_static": "TPOT tiered/dense StaticCache",
    "peak_mem_ratio": "peak memory tiered/dense",
    "kv_peak_ratio": "peak KV bytes tiered/dense",
    "kv_peak_vs_stored": "peak KV ratio / stored fraction",
    "kv_decode_ratio": "decode-phase peak KV bytes tiered/dense",
    "kv_decode_vs_stored": "decode-phase peak KV ratio / stored fraction",
    "ttft_s": "TTFT",
    "e2e_s": "E2E latency",
}


@dataclass
class Outcome:
    """A verdict and the numbers that decided it (one ledger row, less the claim's own fields)."""

    verdict: str
    reason: str
    evidence: str
    n: int = 0
    value: float = math.nan
    threshold: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    value_text: str = "—"


@dataclass
class EvalContext:
    """What every rule may read: the results, the run config and the tiered rows' derived state."""

    results: Results
    config: dict
    bootstrap: dict
    exclude: list[str]
    tiered: pd.DataFrame
    promotion_contexts: list[int]
    headline: tables.Headline
    query_mode: str | None = None  # the mode of a per-mode or per-workload row


def decide(iv: Interval, holds_when: str, threshold: float) -> str:
    """Supported when the whole interval is on the claimed side; rejected when wholly on the other."""
    if holds_when == "below":
        if iv.high < threshold:
            return SUPPORTED
        return REJECTED if iv.low >= threshold else NOT_YET
    if iv.low >= threshold:
        return SUPPORTED
    return REJECTED if iv.high < threshold else NOT_YET


def _side(holds_when: str) -> str:
    return "<" if holds_when == "below" else "≥"


def _combine(parts: list[tuple[str, str, Outcome]]) -> tuple[str, Outcome]:
    """Several metrics/groups: any rejected → rejected; all supported → supported; else not yet."""
    for verdict, _, out in parts:
        if verdict == REJECTED:
            return REJECTED, out
    undecided = [p for p in parts if p[0] != SUPPORTED]
    if not undecided:
        worst = max(parts, key=lambda p: p[2].ci_high if not math.isnan(p[2].ci_high) else -math.inf)
        return SUPPORTED, worst[2]
    return NOT_YET, undecided[0][2]


def _largest(ctx: EvalContext, spec: Any) -> int | None:
    if spec == "largest":
        return max(ctx.promotion_contexts) if ctx.promotion_contexts else None
    return int(spec)


# --- ratio ------------------------------------------------------------------------------------------


def rule_ratio(rule: dict, ctx: EvalContext) -> Outcome:
    table = ctx.results["tiered_promotion"]
    if not table.present:
        return Outcome(NOT_YET, table.reason, table.pattern, threshold=rule["threshold"])
    setting = ctx.headline.setting if rule["setting"] == "headline" else rule["setting"]
    context = _largest(ctx, rule["context"])
    path = rule["decode_path"]
    evidence = f"{table.pattern} · {setting} · {path} · context {context}"
    base = Outcome(NOT_YET, "", evidence, threshold=rule["threshold"])
    if setting is None or context is None:
        base.reason = "no tiered setting or promotion context to evaluate" + (
            f" ({ctx.headline.reason})" if setting is None else ""
        )
        return base
    t = ctx.tiered
    caveat = "" if ctx.headline.exact or rule["setting"] != "headline" else f"; note: {ctx.headline.reason}"
    reading, right = _reading(rule, ctx)
    if reading == "dense-right":  # the setting exact on every prompt dense answers right compresses more
        setting = right.setting
        evidence = f"{table.pattern} · {setting} · {path} · context {context}"
        base.evidence = evidence
        caveat = (
            f"; decided on the dense-right reading: {right.text()}; strict reading: {ctx.headline.reason}"
        )
        if ctx.headline.exact:
            caveat += f" ({ctx.headline.compression:.2f}x)"
    elif reading == "strict":
        caveat += "; decided on the strict reading (exact on every prompt)" + (
            f"; dense-right reading: {right.text()}" if right is not None else ""
        )
    rows = t[(t["setting"] == setting) & (t["context"] == context) & (t["decode_path"] == path)]
    # exactness is read on the prompts of the reading; the metrics on every prompt of the setting
    checked = rows
    if reading == "dense-right":
        ok = hl.dense_right_prompts(ctx.results["tiered_promotion"].df) or set()
        checked = rows[[(int(c), p) in ok for c, p in zip(rows["context"], rows["prompt_id"], strict=True)]]
    if len(rows) == 0:
        base.reason = f"no `{path}` rows for {setting} at context {context}{caveat}"
        return base
    if rule.get("require_exact") and not checked["exact"].all():
        rows = checked
        bad = int((~rows["exact"]).sum())
        return Outcome(
            REJECTED,
            f"{bad}/{len(rows)} prompts not exact on the `{path}` path for {setting}: the claim is about an exact setting",
            evidence,
            n=len(rows),
            value=1.0 - bad / len(rows),
            threshold=rule["threshold"],
            value_text=f"exact {len(rows) - bad}/{len(rows)}",
        )
    parts = []
    for metric in rule["metrics"]:
        vals = pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float)
        valid = vals[np.isfinite(vals) & (vals > 0)]
        label = METRIC_LABELS[metric]
        if len(valid) < rule["min_n"]:
            why = f"{label} measured on {len(valid)} of {len(rows)} prompts (minimum {rule['min_n']})"
            if metric == "peak_mem_ratio" and len(valid) == 0:
                why += "; peak_mem_bytes is null: CUDA peak memory is measured on GPUs only, never estimated"
            out = Outcome(NOT_YET, why, evidence, n=len(valid), threshold=rule["threshold"])
            parts.append((NOT_YET, metric, out))
            continue
        iv = geomean_interval(valid, **_boot(ctx))
        verdict = decide(iv, rule["holds_when"], rule["threshold"])
        level = round(ctx.bootstrap["level"] * 100)
        reason = (
            f"{label} {iv.text()} ({level}% bootstrap CI, n={iv.n}); claim holds when "
            f"{_side(rule['holds_when'])} {rule['threshold']:g}"
        )
        if verdict == NOT_YET:
            reason += ": the interval straddles the threshold"
        out = Outcome(
            verdict,
            reason,
            evidence,
            n=iv.n,
            value=iv.point,
            threshold=rule["threshold"],
            ci_low=iv.low,
            ci_high=iv.high,
            value_text=f"{label}: {iv.text()}",
        )
        parts.append((verdict, metric, out))
    verdict, deciding = _combine(parts)
    deciding.verdict = verdict
    costs = _reported(rows, rule.get("report") or [], ctx)
    deciding.reason = "; ".join(p[2].reason for p in parts) + costs + caveat
    deciding.value_text = "; ".join(p[2].value_text for p in parts if p[2].value_text != "—") or "—"
    if reading is not None:
        deciding.value_text += f" ({setting}, {reading} reading)"
    return deciding


def _reading(rule: dict, ctx: EvalContext) -> tuple[str | None, hl.DenseRight | None]:
    """Which reading of exactness a headline ratio claim decides on, of the rule's ``readings``:
    ``strict`` (the headline, exact on every prompt) or ``dense_right`` (the most compressed setting
    exact on every prompt dense answers right) -- the one whose setting compresses more, strict on
    a tie; None when neither has an exact setting."""
    if rule["setting"] != "headline" or not rule.get("require_exact"):
        return None, None
    readings = rule.get("readings") or ["strict"]
    right = ctx.headline.dense_right
    strict = ctx.headline.compression if ctx.headline.exact and "strict" in readings else None
    alt = right.compression if "dense_right" in readings and right and right.setting else None
    if alt is not None and (strict is None or alt > strict):
        return "dense-right", right
    return ("strict" if strict is not None else None), right


def _reported(rows: pd.DataFrame, metrics: list[str], ctx: EvalContext) -> str:
    """Metrics a rule reports beside its verdict as costs (they never decide it)."""
    out = []
    for metric in metrics:
        vals = pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float)
        valid = vals[np.isfinite(vals) & (vals > 0)]
        if len(valid):
            iv = geomean_interval(valid, **_boot(ctx))
            out.append(f"{METRIC_LABELS[metric]} {iv.text()} (n={iv.n})")
    return f"; reported as a cost, not claimed: {', '.join(out)}" if out else ""


def _boot(ctx: EvalContext) -> dict:
    b = ctx.bootstrap
    return {"level": b["level"], "resamples": b["resamples"], "seed": b["seed"]}


# --- serving ----------------------------------------------------------------------------------------


def rule_quantile_ratio(rule: dict, ctx: EvalContext) -> Outcome:
    table = ctx.results["serving_requests"]
    thr = rule["threshold"]
    if not table.present:
        return Outcome(NOT_YET, table.reason, table.pattern, threshold=thr)
    df, arm, baseline, metric = table.df, rule["arm"], rule["baseline"], rule["metric"]
    evidence = f"{table.pattern} · {METRIC_LABELS[metric]} p{round(rule['quantile'] * 100)} {arm}/{baseline}"
    parts = []
    for (engine, workload), g in df.groupby(["engine", "workload"], sort=True):
        a, b = g[g["arm"] == arm], g[g["arm"] == baseline]
        name = f"{engine}/{workload}"
        if not len(a) or not len(b):
            parts.append(
                (NOT_YET, name, Outcome(NOT_YET, f"{name}: arm {arm} or {baseline} missing", evidence))
            )
            continue
        delta = int(a["cached_tokens"].sum() - b["cached_tokens"].sum())
        if rule.get("require_equal_reuse") and delta != 0:
            why = (
                f"{name}: cached tokens differ by {delta:+d}, so the latency comparison is not at equal reuse"
            )
            parts.append((NOT_YET, name, Outcome(NOT_YET, why, evidence)))
            continue
        if (
            "request_id" in g.columns
            and set(a["request_id"]) == set(b["request_id"])
            and a["request_id"].is_unique
        ):
            # the same requests in both arms: pair them (the summary's and the site's interval)
            b = b.set_index("request_id").loc[a["request_id"]].reset_index()
            iv = paired_quantile_ratio_interval(
                a[metric].to_numpy(float), b[metric].to_numpy(float), q=rule["quantile"], **_boot(ctx)
            )
        else:
            iv = quantile_ratio_interval(a[metric], b[metric], q=rule["quantile"], **_boot(ctx))
        if iv.n < rule["min_n"]:
            why = f"{name}: {iv.n} requests per arm (minimum {rule['min_n']})"
            parts.append((NOT_YET, name, Outcome(NOT_YET, why, evidence, n=iv.n)))
            continue
        verdict = decide(iv, rule["holds_when"], thr)
        text = f"{name} {iv.text()}"
        out = Outcome(verdict, text, evidence, iv.n, iv.point, thr, iv.low, iv.high, text)
        parts.append((verdict, name, out))
    if not parts:
        return Outcome(NOT_YET, "no serving workloads in the table", evidence, threshold=thr)
    verdict, deciding = _combine(parts)
    deciding.verdict = verdict
    deciding.threshold = thr
    deciding.reason = (
        "; ".join(p[2].reason for p in parts)
        + f"; claim holds when {arm}/{baseline} {_side(rule['holds_when'])} {thr:g} on every workload"
    )
    deciding.value_text = "; ".join(p[2].value_text for p in parts if p[2].value_text != "—") or "—"
    deciding.n = min((p[2].n for p in parts), default=0)
    return deciding


def rule_ops_ratio(rule: dict, ctx: EvalContext) -> Outcome:
    """Every op (and the per-request total) of ``arm`` against ``baseline`` at p50, per workload and page.

    The scheduler's workloads must show every op of ``ops``, the plain callers' (``<name>:plain``)
    every op of ``plain_ops``: an expected op missing for either arm makes the claim ``not yet``, so
    no operation where the arm loses can drop out of the verdict silently.
    """
    table = ctx.results["cache_ops"]
    thr = rule["threshold"]
    pages = [int(p) for p in rule["page_sizes"]]
    arm, baseline = rule["arm"], rule["baseline"]
    evidence = f"{table.pattern} · pages {', '.join(map(str, pages))} · p50 {arm}/{baseline}"
    if not table.present:
        return Outcome(NOT_YET, table.reason, table.pattern, threshold=thr)
    df = table.df[table.df["page_size"].isin(pages)]
    parts = []
    for (page, workload), w in df.groupby(["page_size", "workload"], sort=True):
        expected = rule.get("plain_ops", rule["ops"]) if str(workload).endswith(":plain") else rule["ops"]
        for op in expected:
            name = f"p{int(page)} {workload}/{op}"
            by = w[w["op"] == op].set_index("arm")
            if arm not in by.index or baseline not in by.index:
                parts.append(
                    (
                        NOT_YET,
                        name,
                        Outcome(NOT_YET, f"{name}: not measured for {arm} and {baseline}", evidence),
                    )
                )
                continue
            n = int(min(by.loc[arm, "n"], by.loc[baseline, "n"]))
            if n < rule["min_n"]:
                out = Outcome(NOT_YET, f"{name}: {n} operations (minimum {rule['min_n']})", evidence, n)
                parts.append((NOT_YET, name, out))
                continue
            iv = p50_ratio_interval(by.loc[arm], by.loc[baseline], n)
            verdict = decide(iv, rule["holds_when"], thr)
            text = f"{name} {iv.text()} (n={n})"
            out = Outcome(verdict, text, evidence, n, iv.point, thr, iv.low, iv.high, value_text=text)
            parts.append((verdict, name, out))
    if not parts:
        return Outcome(NOT_YET, f"no cache-operation rows at pages {pages}", evidence, threshold=thr)
    verdict, deciding = _combine(parts)
    measured = [p[2] for p in parts if not math.isnan(p[2].value)]
    pick = max if rule["holds_when"] == "below" else min
    worst = pick(measured, key=lambda o: o.value) if measured else None
    if worst is not None and verdict != NOT_YET:
        deciding = worst
    # the worst cells first, at most five named (the site's table lists every one)
    losing_parts = sorted((p[2] for p in parts if p[0] == REJECTED), key=lambda o: -o.value)
    losing = [o.reason for o in losing_parts[:5]] + (
        [f"and {len(losing_parts) - 5} more"] if len(losing_parts) > 5 else []
    )
    pending = [p[2].reason for p in parts if p[0] == NOT_YET]
    if len(pending) > 5:
        pending = [*pending[:5], f"and {len(pending) - 5} more"]
    deciding.verdict = verdict
    deciding.threshold = thr
    deciding.n = min(p[2].n for p in parts)
    side = _side(rule["holds_when"])
    deciding.reason = (
        f"{len(parts)} (page, workload, op) cells, {len(losing_parts)} outside the threshold"
        + (f": {'; '.join(losing)}" if losing else "")
        + (f"; not decidable: {'; '.join(pending)}" if pending else "")
        + f"; holds when every p50 ratio's interval is {side} {thr:g}, the per-request total included"
        + " (each ratio bounded by the two p50s' order-statistic intervals, >= 95% jointly)"
    )
    deciding.value_text = f"worst p50 ratio: {worst.value_text}" if measured else "—"
    return deciding


# --- exactness --------------------------------------------------------------------------------------


def rule_all_exact(rule: dict, ctx: EvalContext) -> Outcome:
    table = ctx.results["longctx"]
    if not table.present:
        return Outcome(NOT_YET, table.reason, table.pattern, threshold=1.0)
    exact = table.df["exact"].astype(bool)
    n, bad = len(exact), int((~exact).sum())
    iv = exact_rate_interval(n - bad, n)
    out = Outcome(
        NOT_YET,
        "",
        table.pattern,
        n,
        1.0 - bad / n,
        1.0,
        iv.low,
        iv.high,
        value_text=f"{rate_text(n - bad, n)} exact",
    )
    if bad:
        out.verdict, out.reason = REJECTED, f"{bad} of {n} prompts differ"
    elif n < rule["min_n"]:
        out.reason = f"{n} prompts checked, all exact (minimum {rule['min_n']})"
    else:
        out.verdict, out.reason = SUPPORTED, f"{n} prompts checked, 0 mismatches"
    return out


def _dense_correct_text(ctx: EvalContext, setting: str, decode_path: str) -> str:
    """The setting's exact rate restricted to the prompts the dense model answers correctly (a prompt
    dense gets wrong never used the retrieved value, so its exactness says less)."""
    dense = ctx.results["dense"].df
    if dense is None or len(dense) == 0 or len(ctx.tiered) == 0:
        return ""
    good = dense[dense["answer_correct"].astype(bool)]
    ok = set(zip(good["context"].astype(int), good["prompt_id"], strict=True))
    t = ctx.tiered
    rows = t[
        (t["setting"] == setting)
        & (t["decode_path"] == decode_path)
        & t["context"].isin(ctx.promotion_contexts)
    ]
    keep = [(int(c), p) in ok for c, p in zip(rows["context"], rows["prompt_id"], strict=True)]
    sel = rows[keep]
    return (
        f"; on prompts dense answers correctly {rate_text(int(sel['exact'].sum()), len(sel))}"
        if len(sel)
        else ""
    )


def _ctx_text(s: tables.SettingStatus) -> str:
    """Exact prompts per context with the rate's 95% Clopper–Pearson interval: ``4096: 8/8 [0.631, 1.00]``."""
    return ", ".join(f"{c}: {rate_text(e, n)}" for c, (e, n) in sorted(s.per_context.items()))


def rule_exists_exact_setting(rule: dict, ctx: EvalContext) -> Outcome:
    table = ctx.results["tiered_promotion"]
    contexts = ctx.promotion_contexts
    evidence = f"{table.pattern} · {rule['decode_path']} · contexts {', '.join(map(str, contexts)) or '—'}"
    if not contexts:
        return Outcome(
            NOT_YET, "the config has no promotion context (prompts.contexts[1:])", evidence, threshold=1.0
        )
    if not table.present:
        return _no_promotion(rule, ctx, evidence)
    statuses = [
        s
        for s in tables.setting_status(ctx.tiered, contexts, rule["decode_path"], rule["min_n"])
        if s.setting not in ctx.exclude
    ]
    extra = {s.setting: _dense_correct_text(ctx, s.setting, rule["decode_path"]) for s in statuses}
    out = _exactness_verdict(statuses, rule, evidence, extra)
    right = ctx.headline.dense_right
    if (
        out.verdict != SUPPORTED and right is not None
    ):  # the strict verdict stands; the other reading beside it
        out.reason += f"; dense-right reading (not the verdict's): {right.text()}"
    return out


def _exactness_verdict(
    statuses: list[tables.SettingStatus], rule: dict, evidence: str, extra: dict[str, str] | None = None
) -> Outcome:
    extra = extra or {}
    if not statuses:
        return Outcome(
            NOT_YET, f"no `{rule['decode_path']}` rows for a candidate setting", evidence, threshold=1.0
        )
    exact = [s for s in statuses if s.status == "exact"]
    # "some setting is exact" is a best-of-k: say how many candidates it was chosen from
    chosen = f"chosen from {len(statuses)} candidate setting(s): {', '.join(s.setting for s in statuses)}"
    if exact:
        n = min(min(n for _, n in s.per_context.values()) for s in exact)
        names = "; ".join(f"{s.setting} ({_ctx_text(s)}{extra.get(s.setting, '')})" for s in exact)
        iv = exact_rate_interval(n, n)
        return Outcome(
            SUPPORTED,
            f"exact on every prompt: {names}; {chosen}",
            evidence,
            n,
            1.0,
            1.0,
            iv.low,
            iv.high,
            value_text=names,
        )
    total = sum(sum(n for _, n in s.per_context.values()) for s in statuses)
    if all(s.status == "mismatch" for s in statuses):
        where = "; ".join(f"{s.setting}: {', '.join(s.divergences[:2])}" for s in statuses)
        good = sum(sum(e for e, _ in s.per_context.values()) for s in statuses)
        return Outcome(
            REJECTED,
            f"every setting diverges somewhere: {where}; {chosen}",
            evidence,
            total,
            good / total,
            1.0,
            value_text=f"{good}/{total} exact over all settings",
        )
    pending = [s for s in statuses if s.status == "insufficient"]
    why = "; ".join(f"{s.setting} exact so far ({_ctx_text(s)})" for s in pending)
    return Outcome(
        NOT_YET,
        f"{why}; needs at least {rule['min_n']} prompts at every promotion context",
        evidence,
        total,
        threshold=1.0,
    )


def _no_promotion(rule: dict, ctx: EvalContext, evidence: str) -> Outcome:
    """No promotion rows: conclusive only when the sweep shows no candidate was exact (none promoted)."""
    table, sweep = ctx.results["tiered_promotion"], ctx.results["tiered_sweep"]
    if sweep.present:
        rows = tables.tiered_rows(sweep.df)
        rows = rows[(rows["decode_path"] == rule["decode_path"]) & ~rows["setting"].isin(ctx.exclude)]
        per = rows.groupby("setting")["exact"].agg(["all", "size"])
        if len(per) and not per["all"].any():
            return Outcome(
                REJECTED,
                f"no setting was exact on every prompt of the sweep ({len(per)} settings), so none was promoted",
                f"{sweep.pattern} · {rule['decode_path']}",
                int(per["size"].sum()),
                0.0,
                1.0,
            )
    return Outcome(NOT_YET, table.reason, evidence, threshold=1.0)


# --- coverage, peers --------------------------------------------------------------------------------


def rule_coverage(rule: dict, ctx: EvalContext) -> Outcome:
    """Generalisation: for every (model, family) of the exactness frontier in this row's mode, a grid
    point exact on every one of at least ``min_n`` prompts while storing at most
    ``max_stored_fraction`` of the tokens.  Not yet with fewer than ``min_models`` models or
    ``min_workloads`` families; rejected when some pair has enough prompts and no such point.  A pair
    whose model answers fewer than ``min_dense_accuracy`` of its prompts right with the dense cache
    does not count: an exact compressor of a model that does not retrieve proves little."""
    table = ctx.results["tiered_frontier"]
    thr = float(rule["max_stored_fraction"])
    if not table.present:
        return Outcome(NOT_YET, table.reason, table.pattern, threshold=thr)
    df = table.df if ctx.query_mode is None else table.df[table.df[C.QUERY_MODE] == ctx.query_mode]
    smallest = tables.frontier_smallest(tables.frontier_table(df), int(rule["min_n"]))
    evidence = f"{table.pattern} · {ctx.query_mode or 'every mode'} · per (model, workload)"
    floor = float(rule.get("min_dense_accuracy", 0.0))
    rate = pd.to_numeric(smallest["n_dense_correct"], errors="coerce") / smallest["n_prompts"]
    weak = smallest[~(rate >= floor)] if floor > 0 else smallest.iloc[0:0]
    if len(weak):
        smallest = smallest[rate >= floor]
        # a model counts with at least min_workloads families of its own left
        per_model = smallest.groupby("model")[C.WORKLOAD].nunique()
        smallest = smallest[smallest["model"].isin(per_model[per_model >= rule["min_workloads"]].index)]
    models, workloads = sorted(set(smallest["model"])), sorted(set(smallest[C.WORKLOAD]))
    if len(weak):
        left_out = ", ".join(
            f"{r.model}/{getattr(r, C.WORKLOAD)} (dense right "
            f"{'?' if pd.isna(r.n_dense_correct) else int(r.n_dense_correct)}/{r.n_prompts})"
            for r in weak.itertuples()
        )
        counts = (
            f"{len(models)} model(s) that retrieve ({', '.join(models)}), {len(workloads)} workload(s); "
            f"left out, answering fewer than {floor:.0%} right with the dense cache: {left_out}"
        )
    else:
        counts = f"{len(models)} model(s) ({', '.join(models)}), {len(workloads)} workload(s) ({', '.join(workloads)})"
    out = Outcome(NOT_YET, "", evidence, len(smallest), None, thr, value_text=counts)
    if len(models) < rule["min_models"] or len(workloads) < rule["min_workloads"]:
        out.reason = (
            f"{counts}; needs at least {rule['min_models']} models and {rule['min_workloads']} workloads"
        )
        return out
    pairs = []
    for r in smallest.itertuples():
        best = r.smallest_exact_stored_fraction
        ok = not math.isnan(best) and best <= thr
        pairs.append((f"{r.model}/{getattr(r, C.WORKLOAD)}", ok, best, r.n))
    worst = max((p[2] for p in pairs if not math.isnan(p[2])), default=math.nan)
    out.value = None if math.isnan(worst) else worst
    text = "; ".join(f"{name} {'—' if math.isnan(b) else f'{b:.3g}'}" for name, _, b, _ in pairs)
    out.value_text = f"{counts}; smallest exact stored fraction {text}"
    failed = [name for name, ok, *_ in pairs if not ok]
    if failed:
        out.verdict = REJECTED
        out.reason = f"{counts}; no grid point exact on every prompt at stored fraction ≤ {thr:g} for {', '.join(failed)}"
    else:
        out.verdict = SUPPORTED
        out.reason = (
            f"{counts}; every pair has a grid point exact on every prompt at stored fraction ≤ {thr:g}"
        )
    return out


def rule_peer_exact(rule: dict, ctx: EvalContext) -> Outcome:
    """Ours against each press at the same matched setting (so the same target stored fraction), one
    family and mode (the view's), at ``context``, on the prompts both ran: paired answer-span
    outcomes, the tiered claims' primary measure.  Only the discordant prompts (one exact, the other
    not) tell the two apart; the exact one-sided McNemar test on them (:func:`stats.discordant_p`)
    decides.  Per press: rejected when the press is exact on significantly more of them (p <
    ``alpha``); supported when ours is exact on at least as many (a tie reads as a tie); not yet
    when the press leads by less than chance explains, or with fewer than ``min_n`` paired prompts.
    Flips when a press is exact where ours is not, on enough prompts."""
    table = ctx.results["peers"]
    if not table.present:
        return Outcome(NOT_YET, table.reason, table.pattern, threshold=0.0)
    df = table.df
    if not len(df):
        return Outcome(NOT_YET, f"`{table.pattern}` has no rows of this family and mode", table.pattern)
    failed = df[df["error"].notna()] if "error" in df else df.iloc[:0]
    if len(failed) == len(df[df["press"] != rule["ours"]]) and len(failed):
        return Outcome(
            NOT_YET, f"every press row failed: {failed['error'].iloc[0]}", table.pattern, threshold=0.0
        )
    ok = df[df["error"].isna()] if "error" in df else df
    both = ok.groupby(["context", "setting_matched"])["press"].agg(
        lambda p: rule["ours"] in set(p) and len(set(p)) > 1
    )
    both = both[both]
    if both.empty:
        return Outcome(
            NOT_YET, f"no context and setting holds both {rule['ours']} and a press", table.pattern
        )
    contexts = sorted({c for c, _ in both.index})
    context = contexts[-1] if rule["context"] == "largest" else int(rule["context"])
    alpha = float(rule.get("alpha", 0.05))
    evidence = (
        f"{table.pattern} · context {context} · answer-span exactness at the matched setting, paired by"
        f" prompt (exact one-sided McNemar on the discordant prompts, alpha {alpha:g})"
    )
    parts = []
    # every press is a comparison: Bonferroni over them, so more presses do not make a chance lead
    # more likely to reject
    tested = ok[(ok["context"] == context) & (ok["press"] != rule["ours"])]
    k = max(1, tested.groupby(["setting_matched", "press"]).ngroups)
    level = alpha / k
    for (c, setting), _ in both.items():
        if c != context:
            continue
        g = ok[(ok["context"] == c) & (ok["setting_matched"] == setting)]
        ours = g[g["press"] == rule["ours"]].set_index("prompt_id")[C.EXACT_ANSWER].astype(bool)
        for press, h in g[g["press"] != rule["ours"]].groupby("press", sort=True):
            theirs = h.set_index("prompt_id")[C.EXACT_ANSWER].astype(bool)
            common = ours.index.intersection(theirs.index)
            o, t = ours.loc[common], theirs.loc[common]
            n, b, d = len(common), int((o & ~t).sum()), int((~o & t).sum())
            p = discordant_p(d, b)
            text = (
                f"{press} @ {setting}: ours {int(o.sum())}/{n} vs {int(t.sum())}/{n} on the same prompts;"
                f" discordant: ours only {b}, {press} only {d} (p = {sig(p, 2)})"
            )
            if n < rule["min_n"]:
                parts.append(
                    (
                        NOT_YET,
                        press,
                        Outcome(NOT_YET, f"{text} (n={n}, minimum {rule['min_n']})", evidence, n),
                    )
                )
                continue
            if d > b and p < level:
                verdict = REJECTED
            elif b >= d:
                verdict = SUPPORTED
            else:
                verdict, text = NOT_YET, f"{text}: {press} ahead by less than chance explains"
            diff = (b - d) / n
            parts.append((verdict, press, Outcome(verdict, text, evidence, n, diff, 0.0, value_text=text)))
    if not parts:
        return Outcome(
            NOT_YET, f"context {context}: no setting holds both {rule['ours']} and a press", evidence
        )
    verdict, deciding = _combine(parts)
    if verdict == SUPPORTED:
        deciding = min((p[2] for p in parts), key=lambda o: o.value)
    deciding.verdict = verdict
    deciding.n = min(p[2].n for p in parts)
    deciding.reason = (
        "; ".join(p[2].reason for p in parts)
        + f"; holds when no press is exact on more discordant prompts than ours, rejected when one is"
        f" significantly (p < {alpha:g} / {k} comparisons = {sig(level, 2)}, Bonferroni)"
    )
    return deciding


def rule_peer_faster(rule: dict, ctx: EvalContext) -> Outcome:
    """Ours' TPOT against the fastest press at least as exact as ours, at the headline's matched
    setting (one family and mode, ``context``): each side's TPOT is a ratio to its own
    environment's dense run (ours: the page-native path's, timed in the promotion run; a press's:
    a dense run timed before and after the presses), so the two compare across environments.  The
    press is the fastest (geometric-mean TPOT ratio) of those exact on at least as many of the
    paired prompts as ours; the claim reads ours / press per prompt both timed, geometric mean with
    a bootstrap interval: supported below ``threshold`` (1: ours faster), rejected when the whole
    interval is at or above it.  Not yet without a press as exact as ours (nothing to compare),
    or with fewer than ``min_n`` prompts timed on both sides.  Flips when ours' TPOT grows past
    the press's."""
    table = ctx.results["peers"]
    threshold = float(rule["threshold"])
    if not table.present:
        return Outcome(NOT_YET, table.reason, table.pattern, threshold=threshold)
    df = table.df
    ok = df[df["error"].isna()] if "error" in df else df
    contexts = sorted(set(ok.loc[ok["press"] == rule["ours"], "context"].astype(int)))
    if not contexts:
        return Outcome(
            NOT_YET, f"no {rule['ours']} rows in `{table.pattern}`", table.pattern, threshold=threshold
        )
    context = contexts[-1] if rule["context"] == "largest" else int(rule["context"])
    g = ok[ok["context"] == context]
    # the headline's matched setting: ours' least-storing one at this context
    mine = g[g["press"] == rule["ours"]]
    frac = mine.groupby("setting_matched")["stored_fraction"].median()
    if frac.empty:
        return Outcome(
            NOT_YET, f"no {rule['ours']} rows at context {context}", table.pattern, threshold=threshold
        )
    setting = str(frac.idxmin())
    evidence = f"{table.pattern} · context {context} · {setting} · TPOT ratio to each environment's dense"
    g = g[g["setting_matched"] == setting]
    ours = g[g["press"] == rule["ours"]].set_index("prompt_id")
    ours_exact = ours[C.EXACT_ANSWER].astype(bool)

    def ratios(frame: pd.DataFrame) -> pd.Series:
        v = pd.to_numeric(frame["tpot_ratio"], errors="coerce")
        return v[np.isfinite(v) & (v > 0)]

    candidates = []
    for press, h in g[g["press"] != rule["ours"]].groupby("press", sort=True):
        h = h.set_index("prompt_id")
        common = ours_exact.index.intersection(h.index)
        theirs = h.loc[common, C.EXACT_ANSWER].astype(bool)
        r = ratios(h)
        if len(common) and int(theirs.sum()) >= int(ours_exact.loc[common].sum()) and len(r):
            candidates.append((float(np.exp(np.log(r).mean())), str(press), r))
    if not candidates:
        return Outcome(
            NOT_YET,
            f"no press is exact on as many prompts as ours at {setting} (context {context}), or none is"
            " timed: no press of equal exactness to compare speed with",
            evidence,
            threshold=threshold,
        )
    speed, press, theirs = min(candidates)
    mine_r = ratios(ours)
    common = mine_r.index.intersection(theirs.index)
    n = len(common)
    text = (
        f"ours (paged) TPOT {sig(float(np.exp(np.log(mine_r).mean())), 3) if len(mine_r) else '—'}x our"
        f" dense; fastest press at least as exact, {press}: {sig(speed, 3)}x its dense"
        f" (of {len(candidates)} as exact)"
    )
    if n < rule["min_n"]:
        return Outcome(
            NOT_YET,
            f"{text}; {n} prompts timed on both sides (minimum {rule['min_n']})",
            evidence,
            n,
            threshold=threshold,
        )
    iv = geomean_interval((mine_r.loc[common] / theirs.loc[common]).to_numpy(dtype=float), **_boot(ctx))
    verdict = decide(iv, "below", threshold)
    level = round(ctx.bootstrap["level"] * 100)
    reason = (
        f"{text}; ours / {press} per prompt {iv.text()} ({level}% bootstrap CI, n={n}); claim holds"
        f" when < {threshold:g}"
    )
    return Outcome(
        verdict,
        reason,
        evidence,
        n=n,
        value=iv.point,
        threshold=threshold,
        ci_low=iv.low,
        ci_high=iv.high,
        value_text=f"ours / {press} TPOT: {iv.text()}",
    )


def _controlled_setting(rule: dict, ctx: EvalContext, summary: pd.DataFrame, context: int) -> str | None:
    """The setting a controls claim is about: the headline, the promoted setting with controls at
    ``context`` storing the least (``most_compressed``: chosen before the controls are read), or a name."""
    if rule["setting"] == "headline":
        return ctx.headline.setting
    if rule["setting"] == "most_compressed":
        own = summary[(summary["context"] == context) & summary["control"].isna()]
        own = own[~own["matched_to"].isin(ctx.exclude)]
        if own.empty:
            return None
        return str(own.sort_values(["stored_fraction", "matched_to"]).iloc[0]["matched_to"])
    return rule["setting"]


def rule_controls_fail(rule: dict, ctx: EvalContext) -> Outcome:
    """The test bed discriminates: where the setting is (mostly) exact, every matched control is not.

    Rejected when the setting is exact on at least ``min_setting_rate`` of the prompts but some
    control at its stored fraction stays exact on more than ``max_exact_rate`` of them (then
    exactness here says little about the method); not yet when the setting itself falls short of
    ``min_setting_rate`` (nothing to discriminate) or the sample is small.
    """
    table = ctx.results["tiered_controls"]
    thr = rule["max_exact_rate"]
    floor = float(rule.get("min_setting_rate", 1.0))
    if not table.present:
        return Outcome(NOT_YET, table.reason, table.pattern, threshold=thr)
    summary = tables.controls_table(table.df)
    context = int(summary["context"].max()) if rule["context"] == "largest" else int(rule["context"])
    setting = _controlled_setting(rule, ctx, summary, context)
    rows = summary[(summary["context"] == context) & (summary["matched_to"] == setting)]
    evidence = f"{table.pattern} · matched to {setting} · context {context}"
    if setting is None or len(rows) == 0:
        return Outcome(
            NOT_YET, f"no controls matched to {setting} at context {context}", evidence, threshold=thr
        )
    own = rows[rows["control"].isna()]
    n_own, k_own = int(own["n"].sum()), int(own["n_exact"].sum())
    if n_own == 0 or k_own < floor * n_own:
        return Outcome(
            NOT_YET,
            f"{setting} itself is exact on only {rate_text(k_own, n_own)} here (needs {floor:.0%}): "
            "nothing to tell apart",
            evidence,
            n_own,
            threshold=thr,
        )
    own_stored = float(own["stored_fraction"].mean())
    parts = []
    for r in rows[rows["control"].notna()].itertuples():
        k, n = int(r.n_exact), int(r.n)
        text = f"{r.control} exact {rate_text(k, n)} (stored {r.stored_fraction:.3g} vs {own_stored:.3g})"
        verdict = NOT_YET if n < rule["min_n"] else (SUPPORTED if k / n <= thr else REJECTED)
        out = Outcome(verdict, text, evidence, n, k / n, thr, r.exact_low, r.exact_high, value_text=text)
        parts.append((verdict, r.control, out))
    if not parts:
        return Outcome(NOT_YET, f"only {setting} itself, no control rows", evidence, threshold=thr)
    verdict, deciding = _combine(parts)
    deciding.verdict = verdict
    deciding.reason = (
        f"{setting} exact {rate_text(k_own, n_own)}; "
        + "; ".join(p[2].reason for p in parts)
        + f"; holds when every control is exact on at most {thr:.0%} of the prompts"
    )
    deciding.value_text = f"{setting} {rate_text(k_own, n_own)}; " + "; ".join(p[2].value_text for p in parts)
    return deciding


RULES: dict[str, Callable[[dict, EvalContext], Outcome]] = {
    "controls_fail": rule_controls_fail,
    "ratio": rule_ratio,
    "quantile_ratio": rule_quantile_ratio,
    "all_exact": rule_all_exact,
    "exists_exact_setting": rule_exists_exact_setting,
    "ops_ratio": rule_ops_ratio,
    "coverage": rule_coverage,
    "peer_exact": rule_peer_exact,
    "peer_faster": rule_peer_faster,
}
