"""Render the result pages (Markdown) from the ledger and the Parquet results with Jinja.

One data-assembly step (:func:`site_data`) computes every table and plot once; each template then
only lays numbers out.  Templates are strict (an undefined name is an error, not an empty cell).
"""

from __future__ import annotations

import html
import math
import platform
import re
import sys
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import yaml

from bcr import contracts as C
from bcr import io
from bcr.contracts import DECOMPOSITION_PHASES, DENSE_PATH, OURS_PRESS, PROMPT_WORKLOADS, QUERY_MODES
from bcr.contracts import WORKLOAD as C_WORKLOAD
from bcr.headline import promotion_contexts
from bcr.ledger import plots, stats, tables
from bcr.ledger.claims import (
    TRACK_PAGES,
    ClaimFile,
    eval_context,
    headline_exclude,
    query_modes,
    workloads,
)
from bcr.ledger.evidence import Results, provenance_rows
from bcr.ledger.limitations import FAMILY_CAVEATS, limitations
from bcr.ledger.version import ledger_version
from bcr.provenance import PROVENANCE_COLUMNS, package_version

# Short column headers for the decomposition table (the phase names are long for a 16-column table).
PHASE_LABELS = {
    "prefill_forward": "prefill",
    "scoring": "scoring",
    "phantoms": "phantoms",
    "surprise": "surprise",
    "packing": "packing",
    "decode_attention": "attention",
    "view_rebuild": "rebuild",
    "decode_other": "step rest",
}
TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGES = {
    "index.md": "index.md.j2",
    "serving.md": "serving.md.j2",
    "correctness.md": "correctness.md.j2",
    "tiered.md": "tiered.md.j2",
    "frontier.md": "frontier.md.j2",
    "decomposition.md": "decomposition.md.j2",
    "peers.md": "peers.md.j2",
    "baseline.md": "baseline.md.j2",
    "limitations.md": "limitations.md.j2",
    "provenance.md": "provenance.md.j2",
}
ADMONITION = {"supported": "success", "rejected": "failure", "not yet": "warning"}

# Each evidence table in plain words, and what produces it when no rule of this workflow does yet.
EVIDENCE = {
    "model_accuracy": ("the model card's accuracy table", "the model's own evaluation"),
    "dense": ("dense baseline runs", "the dense baseline"),
    "tiered_sweep": ("tiered sweep runs", "the tiered sweep"),
    "tiered_promotion": ("tiered promotion runs", "the tiered promotion"),
    "tiered_frontier": (
        "the exactness frontier (a grid of knob values per model, family and mode)",
        "the tiered frontier rule (`tiered.frontier` in the config)",
    ),
    "tiered_decomposition": (
        "per-phase timings of the promoted settings on every decode path, dense beside",
        "the tiered_decomposition rule (instrumented runs on the first `tiered.decomposition_prompts` "
        "timed prompts of each promotion run of the timed family)",
    ),
    "cache_ops": ("cache-operation timings", "the cache-operation benchmark (CPU token-trace replay)"),
    "tiered_controls": (
        "negative controls matched to the promoted settings",
        "the tiered controls rule (recent-only and random-page compressors at the same stored fraction)",
    ),
    "serving_requests": (
        "serving runs (per-request latencies of each arm)",
        "the serving_run rule (each workload through every arm's server: the local engine on CPU, "
        "SGLang's server under config/a100.yaml)",
    ),
    "serving_summary": (
        "the serving summary (Result 1, paired by request)",
        "the serving_summary rule, from every arm's request rows",
    ),
    "longctx": (
        "the long-context correctness check (bcr against radix near the maximum context)",
        "the longctx_correctness rule (prompts near the maximum context, each asked twice, through both arms)",
    ),
    "peers": (
        "kvpress peer runs",
        "the peers_compare rule, from peers_run's rows (kvpress's presses in .venv-peers) and the tiered rows",
    ),
}


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def fmt(v: Any, spec: str = ".3f", unit: str = "") -> str:
    """A number for a table cell (with its unit); missing values are an em dash, never a zero."""
    if _missing(v):
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return format(v, spec) + unit


def sig(v: Any, unit: str = "", digits: int = 3) -> str:
    """``v`` to ``digits`` significant digits in fixed notation (2.26, 0.995, 1.01, 1,950); — when missing."""
    if _missing(v):
        return "—"
    v = float(v)
    if math.isinf(v):
        return "∞"
    text = stats.sig(v, digits)
    if abs(v) >= 1000 and "." not in text:
        text = f"{int(text):,}"
    return text + unit


def interval(row: dict, metric: str, unit: str = "x") -> str:
    """``point [low, high]`` for ``metric`` of a table row (three significant digits); — when missing."""
    point = row.get(metric)
    if _missing(point):
        return "—"
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if _missing(low) or _missing(high):
        return sig(point, unit)
    return f'{sig(point, unit)} <span class="ci">[{sig(low)}, {sig(high)}]</span>'


def md_escape(v: Any) -> str:
    """Text safe inside a Markdown table cell or paragraph (no raw HTML, no cell breaks)."""
    return html.escape("—" if _missing(v) else str(v), quote=False).replace("|", "\\|").replace("\n", " ")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    env.filters["sig"] = sig
    env.filters["md"] = md_escape
    env.filters["dash"] = lambda v: "—" if _missing(v) else v
    env.filters["admonition"] = lambda v: ADMONITION[v]
    env.filters["slug"] = lambda v: str(v).replace(" ", "-")
    env.filters["anchor"] = lambda v: "claim-" + re.sub(r"[^a-z0-9]+", "-", str(v).lower()).strip("-")
    env.globals["interval"] = interval
    env.tests["missing"] = _missing
    return env


def _records(df: pd.DataFrame) -> list[dict]:
    if df is None or len(df) == 0:
        return []
    # NaN and pd.NA become None, so a missing cell is missing (an em dash), never the text "nan"
    return [{k: (None if _missing(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


def evidence_info(results: Results) -> dict[str, dict]:
    """Per evidence table: plain words, present or not, and for a missing one what would produce it
    (the rule its result contract names, bcr/contracts.py)."""
    out = {}
    for name, table in results.tables.items():
        words, track = EVIDENCE.get(name, (name.replace("_", " "), "its track"))
        rule = table.contract.rule if table.contract is not None else None
        if rule:
            needs = f"rule `{rule}` writes it; it produced no rows for this run"
        else:
            needs = f"no rule of this workflow writes it yet: it comes from {track}"
        out[name] = {
            "name": name,
            "words": words,
            "present": table.present,
            "pattern": table.pattern,
            "reason": table.reason,
            "needs": needs,
        }
    return out


def plain_reason(text: Any, info: dict[str, dict]) -> str:
    """A ledger reason with file patterns replaced by what they are ("not measured in this run: …")."""
    if _missing(text):
        return "—"
    text = str(text)
    for e in info.values():
        if e["reason"] and text.strip() == e["reason"]:
            return f"not measured in this run ({e['words']}: none produced)"
        text = text.replace(f"`{e['pattern']}`", e["words"]).replace(e["pattern"], e["words"])
    return text.replace("`", "")


def note_context_map(config: dict) -> dict[int, int]:
    """Our context → the note's context it stands in for (``site.reference_contexts``, by position)."""
    ours = [int(c) for c in config["prompts"]["contexts"]]
    ref = config.get("site", {}).get("reference_contexts") or ours
    return dict(zip(ours, [int(c) for c in ref], strict=True))


def _dense_summary(df: pd.DataFrame | None) -> pd.DataFrame:
    if df is None or len(df) == 0:
        return pd.DataFrame()
    keys = [C_WORKLOAD, "context"]
    g = df.groupby(keys)
    peak = pd.to_numeric(df["peak_mem_bytes"], errors="coerce").groupby([df[k] for k in keys]).max()
    return pd.DataFrame(
        {
            "n": g.size(),
            "accuracy": g["answer_correct"].mean(),
            "ttft_ms": g["ttft_s"].median() * 1000,
            "tpot_ms": g["tpot_s"].median() * 1000,
            "kv_mib": g["kv_bytes"].median() / 2**20,
            "peak_gib": peak / 2**30,
        }
    ).reset_index()


def shorten(text: Any, limit: int = 90) -> str:
    """The first clause of a long "decided by" text (the rest is behind a details toggle)."""
    if _missing(text):
        return "—"
    text = str(text)
    first = re.split(r";\s", text, maxsplit=1)[0]
    if len(first) <= limit:
        return first + (" …" if len(first) < len(text) else "")
    cut = first[:limit].rsplit(" ", 1)[0]
    return cut + " …"


def glance_rows(claims: list[dict], spec: ClaimFile, modes: list[str]) -> list[dict]:
    """Results at a glance: one row per headline question (a claim with a ``glance`` label) and
    prompt family, one cell per query mode (or one for a claim that has no mode): the verdict, the
    deciding number and n; the note's number beside it."""
    by_id = {c.id: c for c in spec.claims}
    rows: dict[tuple[str, str | None], dict] = {}
    for c in claims:
        claim = by_id[c["claim"]]
        if not claim.glance:
            continue
        family = c["workload"] if claim.per_workload else None
        key = (claim.id, family)
        row = rows.setdefault(
            key,
            {
                "label": claim.glance,
                "family": family,
                "page": c["page"],
                "note_verdict": claim.note_verdict,
                "note_number": claim.note_number,
                "cells": {},
            },
        )
        row["cells"][c["query_mode"]] = {
            "verdict": c["verdict"],
            "text": c["glance_text"],
            "n": c["n"],
            "claim_id": c["claim_id"],
        }
    out = list(rows.values())
    for row in out:
        row["per_mode"] = any(m in row["cells"] for m in modes)
    return out


def _glance_text(c: dict) -> str:
    """Our deciding number for the glance table: the value with its interval where the rule has one,
    else the first clause of what decided the verdict."""
    if c["waiting_on"]:
        return "not measured in this run"
    value, lo, hi = c.get("value"), c.get("ci_low"), c.get("ci_high")
    kind = c.get("rule_kind")
    if kind in ("ratio", "quantile_ratio", "ops_ratio") and value is not None:
        iv = f" [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else ""
        return f"{value:.3g}x{iv}"
    return shorten(c["decided"], 44)


def _changes(claims: list[dict]) -> list[dict]:
    """ "What changed since the note": each of the note's claims, its verdict there and here (a
    per-mode claim in the note's own protocol, question-aware)."""
    out = []
    for r in claims:
        if _missing(r["note_verdict"]) or r.get("query_mode") not in (None, QUERY_MODES[0]):
            continue
        if r.get("workload") not in (None, PROMPT_WORKLOADS[0]):
            continue
        if r["verdict"] == "not yet" and r["note_verdict"] != "not yet":
            status = "not yet re-tested here"
        elif r["verdict"] == r["note_verdict"]:
            status = "same verdict"
        else:
            status = f"changed: {r['note_verdict']} → {r['verdict']}"
        out.append({**r, "status": status})
    return out


PROVENANCE_LABELS = {
    "run_id": "Run",
    "git_commit": "Commit",
    "config_hash": "Config hash",
    "model": "Model",
    "device": "Device",
    "torch": "torch",
    "transformers": "transformers",
    "sglang": "sglang",
}


def provenance_split(rows: list[dict]) -> dict:
    """The provenance columns shared by every file (shown once) and those that vary (one column each)."""
    cols = [c for c in PROVENANCE_LABELS if any(c in r for r in rows)]
    common, varying = [], []
    for c in cols:
        vals = {str(r.get(c)) if not _missing(r.get(c)) else "—" for r in rows}
        if len(vals) == 1:
            common.append({"label": PROVENANCE_LABELS[c], "value": vals.pop()})
        else:
            varying.append({"key": c, "label": PROVENANCE_LABELS[c]})
    return {"common": common, "varying": varying}


def _first_provenance(results: Results) -> dict:
    """Run, commit and device of the first result file (all ``None`` when there is none)."""
    prov = provenance_rows(results)
    return dict.fromkeys(PROVENANCE_COLUMNS) if len(prov) == 0 else prov.iloc[0].to_dict()


def with_note_contexts(text: str, note_ctx: dict[int, int]) -> str:
    """``context 8192`` → ``context 8192 (note: 32768)``: each context with the note's it stands in for."""

    def one(n: str) -> str:
        ref = note_ctx.get(int(n))
        return n if ref is None or ref == int(n) else f"{n} (note: {ref})"

    def sub(m: re.Match) -> str:
        return f"{m.group(1)} " + ", ".join(one(n) for n in m.group(2).split(", "))

    return re.sub(r"\b(contexts?) (\d+(?:, \d+)*)\b(?! \(note)", sub, text)


WORKLOAD_TITLES = {
    "needle": "One needle",
    "scattered": "Scattered value",
    "distractor": "Distractor vaults",
}
MODE_TITLES = {
    "question_aware": "Question-aware (the question compressed with the context: the study's protocol)",
    "question_agnostic": "Question-agnostic (compressed before the question arrives: kvpress's protocol)",
}


def _claims(
    ledger: pd.DataFrame,
    spec: ClaimFile,
    info: dict[str, dict],
    lims: list[dict],
    note_ctx: dict[int, int] | None = None,
) -> list[dict]:
    """Ledger rows with what the pages add: page, plain-words "decided by", caveat markers, missing evidence."""
    note_ctx = note_ctx or {}
    by_id = {c.id: c for c in spec.claims}
    present = {item["id"]: item for item in lims}
    out = []
    for c in _records(ledger):
        claim = by_id[c["claim"]]
        ev = info.get(claim.evidence)
        c["page"] = TRACK_PAGES[c["track"]]
        decided = c["value_text"] if c["value_text"] not in (None, "—") else c["reason"]
        c["decided"] = with_note_contexts(plain_reason(decided, info), note_ctx)
        c["why"] = with_note_contexts(plain_reason(c["reason"], info), note_ctx)
        # the evidence: what it is in words, which rows (setting, path, context), and the files
        detail = str(c["evidence"] or "").split(" · ")[1:] if ev else []
        c["evidence_words"] = with_note_contexts(
            " · ".join([ev["words"] if ev else claim.evidence, *detail]), note_ctx
        )
        c["evidence_files"] = ev["pattern"] if ev else None
        c["waiting_on"] = ev if ev and not ev["present"] else None
        c["caveats"] = [
            {
                "id": f"lim-{k}",
                "short": present[f"lim-{k}"]["short"] or k,
                "summary": present[f"lim-{k}"]["summary"],
            }
            for k in dict.fromkeys([*claim.caveats, FAMILY_CAVEATS.get(c.get("workload"))])
            if k and f"lim-{k}" in present
        ]
        if c["waiting_on"] or str(c["reason"]).startswith("no `"):
            c["caveats"] = []  # nothing measured: no property of the setup decided it
        c["by_construction"] = claim.by_construction
        c["rule_kind"] = claim.rule["kind"]
        c["decided_short"] = shorten(c["decided"])
        c["why_short"] = shorten(c["why"], 160)
        c["note_number"] = claim.note_number
        c["glance_text"] = _glance_text(c)
        out.append(c)
    return out


def _mode_section(
    spec: ClaimFile,
    results: Results,
    config: dict,
    reference: dict,
    workload: str,
    mode: str,
    note_ctx: dict[int, int],
    comp_claim,
    cap,
    pdir: Path,
) -> dict:
    """One (prompt family, query mode): its sweep, promotion and controls tables, headline and plots."""
    boot = spec.bootstrap
    path = spec.headline["decode_path"]
    view = results.view(workload, mode)
    dense = view["dense"].df
    promo = tables.tiered_rows(view["tiered_promotion"].df, dense)
    sweep_rows = tables.tiered_rows(view["tiered_sweep"].df, dense)
    promoted = tables.promoted_settings(view.promoted_json)
    sweep = tables.sweep_table(sweep_rows, reference, promoted, boot)
    promotion = tables.promotion_table(promo, reference, note_ctx, boot)
    plot_files: dict[str, str] = {}
    sweep_p = sweep[sweep["decode_path"] == path] if len(sweep) else sweep
    promo_p = promotion[promotion["decode_path"] == path] if len(promotion) else promotion
    if len(sweep_p) or len(promo_p):
        name = f"compression_vs_exactness_{workload}_{mode}.svg"
        plots.compression_vs_exactness(
            promo_p,
            sweep_p,
            reference,
            pdir / name,
            threshold=comp_claim.rule["threshold"] if comp_claim else None,
            note_ctx=note_ctx,
            cap=cap,
        )
        plot_files["compression"] = f"plots/{name}"
    # clocks only where a claim reads them: the latency table and plot show the timed rows alone
    n_timed = promotion["tpot_ratio_n"] if "tpot_ratio_n" in promotion.columns else pd.Series(dtype=float)
    timed = promotion[pd.to_numeric(n_timed, errors="coerce").fillna(0) > 0] if len(promotion) else promotion
    if len(timed):
        name = f"latency_ratios_{workload}_{mode}.svg"
        plots.latency_ratios(timed, reference, pdir / name, note_ctx=note_ctx)
        plot_files["ratios"] = f"plots/{name}"
    return {
        "mode": mode,
        "workload": workload,
        "key": f"{workload}-{mode}",
        "title": f"{WORKLOAD_TITLES.get(workload, workload)}: {MODE_TITLES.get(mode, mode)}",
        "headline": eval_context(spec, view, config).headline,  # the view is already cut
        "dense_right": tables.most_compressed_dense_right(
            view["tiered_promotion"].df, promotion_contexts(config), path, headline_exclude(spec, config)
        ),
        "sweep": _records(sweep),
        "promotion": [{**r, "query_mode": mode} for r in _records(promotion)],
        "latency": _records(timed),
        "untimed_settings": sorted(set(promotion["setting"]) - set(timed["setting"]))
        if len(promotion)
        else [],
        "negative_controls": _records(tables.controls_table(view["tiered_controls"].df)),
        "dense_source": promo.attrs.get("dense_source", {}),
        "plots": plot_files,
        "tables": view.tables,
    }


def _frontier_section(spec: ClaimFile, results: Results, reference: dict, pdir: Path) -> dict:
    """The frontier page: per (model, family, mode) the smallest exact stored fraction, every grid
    point, and one plot per model (the primary's promoted settings starred at their sweep values)."""
    table = tables.frontier_table(results["tiered_frontier"].df)
    cov = next((c for c in spec.claims if c.rule["kind"] == "coverage"), None)
    smallest = tables.frontier_smallest(table, int(cov.rule["min_n"]) if cov else 1)
    note = [
        float(r["stored_fraction"])
        for r in reference.get("promotion", {}).get("rows", [])
        if r.get("setting") == "front_ret25" and "stored_fraction" in r
    ]
    note_fraction = sum(note) / len(note) if note else None
    promoted = _promoted_sweep_points(results)
    plot_files = {}
    for model in sorted(set(table["model"])):
        name = f"frontier_{model.replace('/', '_')}.svg"
        stars = promoted[promoted["model"] == model] if len(promoted) else promoted
        plots.frontier(table, model, pdir / name, promoted=stars, note_fraction=note_fraction)
        plot_files[f"frontier:{model}"] = f"plots/{name}"
    return {
        "smallest": _records(smallest),
        "points": _records(table),
        "models": sorted(set(table["model"])),
        "note_fraction": note_fraction,
        "plots": plot_files,
    }


def _peers_section(results: Results, config: dict, pdir: Path) -> dict:
    """The peers page: per (context, mode, matched setting, press) the exact count and interval, the
    peer environment's checks, and a plot per (family, mode) with a panel per context (ours as the
    frontier line at the sweep context)."""
    df = results["peers"].df
    table = tables.peers_table(df)
    frontier = tables.frontier_table(results["tiered_frontier"].df)
    plot_files = {}
    sweep_context = int(config["prompts"]["contexts"][0])
    pairs = zip(table["workload"], table["query_mode"], strict=True)
    for workload, mode in sorted({(str(w), str(m)) for w, m in pairs}):
        name = f"peers_{workload}_{mode}.svg"
        plots.peers(table, frontier, workload, mode, sweep_context, pdir / name, OURS_PRESS)
        plot_files[f"peers:{workload}:{mode}"] = f"plots/{name}"
    checks = {}
    if df is not None and len(df):
        for col in ("hook_equal", "pipeline_equal", "dense_equal_main"):
            if col in df:
                v = df[col].dropna().astype(bool)
                checks[col] = {"n": len(v), "equal": int(v.sum())}
    errors = []
    if df is not None and len(df) and "error" in df:
        counts = df["error"].dropna().value_counts()
        errors = [{"error": str(e), "rows": int(n)} for e, n in counts.head(5).items()]
    return {
        "table": _records(table),
        "plots": plot_files,
        "checks": checks,
        "families": _peer_groups(table, config),
        "errors": errors,
    }


def _peer_groups(table: pd.DataFrame, config: dict) -> list[dict]:
    """The comparison a reader wants, one tab per (family, mode), in the run's order (as the tiered
    page's): per context one table, a row per press with ours first, a column per matched setting
    (its stored fraction), the presses sorted by exact rate at the first (least compressed)
    setting, the best press per setting named."""
    if table is None or not len(table):
        return []
    tabs = []
    order = [(w, m) for w in workloads(config) for m in query_modes(config)]
    groups = table.groupby([C_WORKLOAD, "query_mode"])
    for (workload, mode), t in sorted(
        groups, key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)
    ):
        contexts = []
        for context, g in t.groupby("context", sort=True):
            frac = g[g["press"] == OURS_PRESS].groupby("setting_matched")["stored_fraction"].median()
            order = sorted(set(g["setting_matched"]), key=lambda s: (-float(frac.get(s, 0.0)), s))
            columns, best = [], {}
            for setting in order:
                h = g[(g["setting_matched"] == setting) & (g["press"] != OURS_PRESS) & (g["n"] > 0)]
                h = h.sort_values(["exact_rate", "press"], ascending=[False, True])
                best[setting] = str(h.iloc[0]["press"]) if len(h) else None
                columns.append(
                    {"setting": setting, "stored_fraction": frac.get(setting), "best": best[setting]}
                )
            cells = {(r["press"], r["setting_matched"]): r for r in _records(g)}
            first = order[0] if order else None
            rate = g[g["setting_matched"] == first].set_index("press")["exact_rate"]
            presses = sorted(
                {str(p) for p in g["press"]} - {OURS_PRESS},
                key=lambda p: (-(rate.get(p) if pd.notna(rate.get(p)) else -1.0), p),
            )
            rows = [
                {
                    "press": p,
                    "cells": [cells.get((p, s)) for s in order],
                    "best": [best[s] == p for s in order],
                    "masks": any(bool((cells.get((p, s)) or {}).get("masks")) for s in order),
                }
                for p in [OURS_PRESS, *presses]
                if any((p, s) in cells for s in order)
            ]
            contexts.append({"context": int(context), "columns": columns, "rows": rows})
        tabs.append({"workload": str(workload), "mode": str(mode), "contexts": contexts})
    return tabs


def _promoted_sweep_points(results: Results) -> pd.DataFrame:
    """The promoted settings' sweep rows, one per (model, family, mode, setting): answer-span exact
    count and median stored fraction (what the frontier plots star)."""
    cols = ["model", "workload", "query_mode", "setting", "n", "n_exact", "stored_fraction"]
    sweep = results["tiered_sweep"].df
    if sweep is None or not len(sweep):
        return pd.DataFrame(columns=cols)
    out = []
    for (workload, mode), decision in results.promoted.items():
        names = set(decision.get("promoted") or [])
        g = sweep[
            (sweep["workload"] == workload)
            & (sweep["query_mode"] == mode)
            & (sweep["decode_path"] != DENSE_PATH)
            & sweep["setting"].isin(names)
        ]
        for (model, setting), r in g.groupby(["model", "setting"], sort=True):
            answer = (r["exact_answer"] if "exact_answer" in r else r["exact"]).astype(bool)
            out.append(
                [
                    model,
                    workload,
                    mode,
                    setting,
                    len(r),
                    int(answer.sum()),
                    float(r["stored_fraction"].median()),
                ]
            )
    return pd.DataFrame(out, columns=cols)


def site_data(
    results: Results,
    config: dict,
    ledger: pd.DataFrame,
    spec: ClaimFile,
    reference: dict,
    src: Path,
    repo: Path | None = None,
) -> dict:
    """Every table, plot and fact the templates use; plots are written under ``src/plots``."""
    dense = results["dense"].df
    boot = spec.bootstrap
    note_ctx = note_context_map(config)
    path = spec.headline["decode_path"]
    serving_claim = next((c for c in spec.claims if c.rule["kind"] == "quantile_ratio"), None)
    ops_claim = next((c for c in spec.claims if c.rule["kind"] == "ops_ratio"), None)
    comp_claim = next(
        (c for c in spec.claims if c.rule["kind"] == "ratio" and c.rule["metrics"] == ["compression"]), None
    )
    arm, baseline = (
        (serving_claim.rule["arm"], serving_claim.rule["baseline"]) if serving_claim else ("bcr", "radix")
    )
    serving = tables.serving_table(results["serving_summary"].df, reference, arm, baseline)
    serving_all = tables.serving_baselines_table(results["serving_summary"].df, arm)
    ops_ours, ops_base = (
        (ops_claim.rule["arm"], ops_claim.rule["baseline"]) if ops_claim else ("bcr", "unified_rust")
    )
    cache_ops, ops_arms = tables.cache_ops_table(results["cache_ops"].df, ops_ours, ops_base)
    decomp = tables.decomposition_table(results["tiered_decomposition"].df)
    modes, families = query_modes(config), workloads(config)
    ectx = eval_context(spec, results, config, families[0], modes[0] if modes else None)

    study_path = repo / "config" / "a100.yaml" if repo is not None else None
    study = (
        yaml.safe_load(study_path.read_text()) if study_path is not None and study_path.is_file() else None
    )
    lims = limitations(results, config, ledger, reference, headline=ectx.headline.setting, study=study)
    cap = next((item["cap"] for item in lims if item.get("cap")), None)

    plot_files: dict[str, str] = {}
    pdir = src / "plots"
    mode_sections = [
        _mode_section(spec, results, config, reference, w, m, note_ctx, comp_claim, cap, pdir)
        for w in families
        for m in modes
    ]
    if results["cache_ops"].present:
        pages = sorted(results["cache_ops"].df["page_size"].unique())
        claimed = [p for p in (ops_claim.rule["page_sizes"] if ops_claim else []) if p in pages]
        page = claimed[0] if claimed else pages[-1]
        plots.cache_ops_bars(results["cache_ops"].df, int(page), pdir / "cache_ops.svg")
        plot_files["cache_ops"] = "plots/cache_ops.svg"
        plot_files["cache_ops_page"] = str(int(page))
    frontier = _frontier_section(spec, results, reference, pdir)
    plot_files.update(frontier.pop("plots"))
    peers = _peers_section(results, config, pdir)
    plot_files.update(peers.pop("plots"))
    if results["serving_requests"].present:
        plots.ttft_distributions(results["serving_requests"].df, pdir / "ttft_distributions.svg")
        plot_files["ttft"] = "plots/ttft_distributions.svg"
    if len(decomp):
        plots.decomposition_bars(decomp, pdir / "decomposition.svg")
        plot_files["decomposition"] = "plots/decomposition.svg"

    info = evidence_info(results)
    claims = _claims(ledger, spec, info, lims, note_ctx)
    prov = provenance_rows(results)
    return {
        "config": config,
        "config_yaml": yaml.safe_dump(config, sort_keys=False).rstrip(),
        "title": config.get("site", {}).get("title", "bcr-memory results"),
        "card": results.card,
        "cards": results.cards,
        "claims": claims,
        "by_track": {t: [c for c in claims if c["track"] == t] for t in TRACK_PAGES},
        "changes": _changes(claims),
        "glance": glance_rows(claims, spec, modes),
        "mode_names": modes,
        "modes": mode_sections,
        "site_version": ledger_version(ledger, config),
        "headline_path": path,
        # the decode path the page-native speed and memory claims read (the headline's own otherwise)
        "paged_path": next(
            (c.rule["decode_path"] for c in spec.claims if c.rule.get("decode_path") not in (None, path)),
            path,
        ),
        "contexts": [int(c) for c in config["prompts"]["contexts"]],
        "promotion_contexts": promotion_contexts(config),
        "note_ctx": note_ctx,
        "reference": reference,
        "tables": results.tables,
        "evidence": info,
        "bootstrap_level": round(float(boot["level"]) * 100),
        "promotion": [r for sec in mode_sections for r in sec["promotion"]],
        "serving": _records(serving),
        "serving_all": _records(serving_all),
        "serving_arms": (arm, baseline),
        "cache_ops": _records(cache_ops),
        "ops_arms": ops_arms,
        "ops_pair": (ops_ours, ops_base),
        "ops_pages": sorted(
            {int(r["page_size"]) for r in _records(cache_ops)},
            key=lambda p: (ops_claim is None or p != ops_claim.rule["page_sizes"][0], p),
        ),
        "longctx": tables.longctx_summary(results["longctx"].df),
        "decomposition": _records(decomp),
        "decomposition_phases": [p for p in DECOMPOSITION_PHASES if f"{p}_ms" in decomp.columns],
        "phase_labels": PHASE_LABELS,
        "frontier": frontier,
        "paged": [r for sec in mode_sections for r in sec["promotion"] if r["decode_path"] != path],
        "peers": peers,
        "dense": _records(_dense_summary(dense)),
        "plots": plot_files,
        "provenance": _records(prov),
        "prov_split": provenance_split(
            _records(prov) + ([results.card["provenance"]] if (results.card or {}).get("provenance") else [])
        ),
        "prov": _first_provenance(results),
        "environments": _environments(results),
        "failures": _failures(results),
        "run_cost": _run_cost(results),
        "limitations": lims,
        "family_caveats": FAMILY_CAVEATS,
        "versions": {
            "python": platform.python_version(),
            "pandas": pd.__version__,
            "matplotlib": package_version("matplotlib"),
            "jinja2": package_version("Jinja2"),
            "mkdocs": package_version("mkdocs"),
            "mkdocs-material": package_version("mkdocs-material"),
            "mike": package_version("mike"),
            "platform": sys.platform,
        },
    }


def _environments(results: Results) -> list[dict]:
    """Each environment's freeze (``results/run/freeze/``) with its lock, package count and key versions."""
    from bcr.environments import summary

    out = []
    for name, lock in C.ENVIRONMENTS.items():
        path = results.root / C.RUN_FREEZE.pattern.format(environment=name)
        text = path.read_text() if path.is_file() else None
        info = (
            summary(text)
            if text is not None
            else {"packages": None, "reason": "not written by this run", "key": {}}
        )
        out.append(
            {"name": name, "lock": lock, "file": results.rel(path), "text": (text or "").rstrip(), **info}
        )
    return out


def _failures(results: Results) -> list[dict]:
    """The failed jobs of the run that built these results (``results/run/failed_jobs.json``)."""
    path = results.root / C.FAILED_JOBS.pattern
    return list(io.read_json(path).get("jobs") or []) if path.is_file() else []


def _run_cost(results: Results) -> dict:
    """The run's cost per stage and its slowest jobs, from ``results/run/benchmarks.parquet``."""
    from bcr.ledger.benchmarks import slowest, stages

    path = results.root / C.BENCHMARKS.pattern
    if not path.is_file():
        return {"file": results.rel(path), "stages": [], "slowest": [], "total_s": None, "jobs": 0}
    bench = pd.read_parquet(path)
    return {
        "file": results.rel(path),
        "stages": _records(stages(bench)),
        "slowest": _records(slowest(bench)),
        "total_s": float(bench["s"].sum()),
        "jobs": len(bench),
    }


def render_pages(data: dict) -> dict[str, str]:
    env = environment()
    return {page: env.get_template(tpl).render(**data) for page, tpl in PAGES.items()}
