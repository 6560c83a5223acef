"""Render the result pages (Markdown) from the ledger and the Parquet results with Jinja.

One data-assembly step (:func:`site_data`) computes every table and plot once; each template then
only lays numbers out.  Templates are strict (an undefined name is an error, not an empty cell).
"""

from __future__ import annotations

import html
import math
import platform
import sys
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import yaml

from bcr.ledger import plots, tables
from bcr.ledger.claims import TRACK_PAGES, ClaimFile, eval_context, promotion_contexts
from bcr.ledger.evidence import Results, provenance_rows
from bcr.ledger.limitations import limitations
from bcr.ledger.version import ledger_version
from bcr.provenance import PROVENANCE_COLUMNS, package_version

TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGES = {
    "index.md": "index.md.j2",
    "serving.md": "serving.md.j2",
    "correctness.md": "correctness.md.j2",
    "tiered.md": "tiered.md.j2",
    "decomposition.md": "decomposition.md.j2",
    "peers.md": "peers.md.j2",
    "baseline.md": "baseline.md.j2",
    "limitations.md": "limitations.md.j2",
    "provenance.md": "provenance.md.j2",
}
ADMONITION = {"supported": "success", "rejected": "failure", "not yet": "warning"}


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
    env.filters["md"] = md_escape
    env.filters["admonition"] = lambda v: ADMONITION[v]
    env.filters["slug"] = lambda v: str(v).replace(" ", "-")
    env.tests["missing"] = _missing
    return env


def _records(df: pd.DataFrame) -> list[dict]:
    return [] if df is None or len(df) == 0 else df.to_dict("records")


def note_context_map(config: dict) -> dict[int, int]:
    """Our context → the note's context it stands in for (``site.reference_contexts``, by position)."""
    ours = [int(c) for c in config["prompts"]["contexts"]]
    ref = config.get("site", {}).get("reference_contexts") or ours
    return dict(zip(ours, [int(c) for c in ref], strict=True))


def _dense_summary(df: pd.DataFrame | None) -> pd.DataFrame:
    if df is None or len(df) == 0:
        return pd.DataFrame()
    g = df.groupby("context")
    return pd.DataFrame(
        {
            "n": g.size(),
            "accuracy": g["answer_correct"].mean(),
            "ttft_s": g["ttft_s"].median(),
            "tpot_s": g["tpot_s"].median(),
            "kv_mib": g["kv_bytes"].median() / 2**20,
            "peak_gib": pd.to_numeric(df["peak_mem_bytes"], errors="coerce").groupby(df["context"]).max()
            / 2**30,
        }
    ).reset_index()


def _changes(ledger: pd.DataFrame) -> list[dict]:
    """ "What changed since the note": each of the note's claims, its verdict there and here."""
    out = []
    for r in ledger.to_dict("records"):
        if _missing(r["note_verdict"]):
            continue
        if r["verdict"] == "not yet" and r["note_verdict"] != "not yet":
            status = "not yet re-tested here"
        elif r["verdict"] == r["note_verdict"]:
            status = "same verdict"
        else:
            status = f"changed: {r['note_verdict']} → {r['verdict']}"
        out.append({**r, "status": status})
    return out


def _first_provenance(results: Results) -> dict:
    """Run, commit and device of the first result file (all ``None`` when there is none)."""
    prov = provenance_rows(results)
    return dict.fromkeys(PROVENANCE_COLUMNS) if len(prov) == 0 else prov.iloc[0].to_dict()


def site_data(
    results: Results, config: dict, ledger: pd.DataFrame, spec: ClaimFile, reference: dict, src: Path
) -> dict:
    """Every table, plot and fact the templates use; plots are written under ``src/plots``."""
    dense = results["dense"].df
    promo = tables.tiered_rows(results["tiered_promotion"].df, dense)
    sweep_rows = tables.tiered_rows(results["tiered_sweep"].df, dense)
    promoted = tables.promoted_settings(results.promoted)
    note_ctx = note_context_map(config)
    sweep = tables.sweep_table(sweep_rows, reference, promoted)
    promotion = tables.promotion_table(promo, reference, note_ctx)
    path = spec.headline["decode_path"]
    serving_claim = next((c for c in spec.claims if c.rule["kind"] == "quantile_ratio"), None)
    ops_claim = next((c for c in spec.claims if c.rule["kind"] == "ops_ratio"), None)
    arm, baseline = (
        (serving_claim.rule["arm"], serving_claim.rule["baseline"]) if serving_claim else ("bcr", "radix")
    )
    serving = tables.serving_table(results["serving_requests"].df, reference, arm, baseline)
    ops_ours, ops_base = (
        (ops_claim.rule["arm"], ops_claim.rule["baseline"]) if ops_claim else ("bcr", "unified_rust")
    )
    cache_ops, ops_arms = tables.cache_ops_table(results["cache_ops"].df, ops_ours, ops_base)
    decomp = tables.decomposition_table(results["tiered_decomposition"].df)
    peers_bin = next((c.rule["bin_width"] for c in spec.claims if c.rule["kind"] == "peer_exact"), 0.05)
    peers = tables.peers_table(results["peers"].df, peers_bin)

    plot_files: dict[str, str] = {}
    pdir = src / "plots"
    sweep_p = sweep[sweep["decode_path"] == path] if len(sweep) else sweep
    promo_p = promotion[promotion["decode_path"] == path] if len(promotion) else promotion
    if len(sweep_p) or len(promo_p):
        plots.compression_vs_exactness(promo_p, sweep_p, reference, pdir / "compression_vs_exactness.svg")
        plot_files["compression"] = "plots/compression_vs_exactness.svg"
    if len(promotion):
        plots.ratio_bars(promotion, pdir / "latency_ratios.svg")
        plot_files["ratios"] = "plots/latency_ratios.svg"
    if results["cache_ops"].present:
        pages = sorted(results["cache_ops"].df["page_size"].unique())
        page = (
            ops_claim.rule["page_size"] if ops_claim and ops_claim.rule["page_size"] in pages else pages[-1]
        )
        plots.cache_ops_bars(results["cache_ops"].df, int(page), pdir / "cache_ops.svg")
        plot_files["cache_ops"] = "plots/cache_ops.svg"
        plot_files["cache_ops_page"] = str(int(page))
    if results["serving_requests"].present:
        plots.ttft_distributions(results["serving_requests"].df, pdir / "ttft_distributions.svg")
        plot_files["ttft"] = "plots/ttft_distributions.svg"
    if len(decomp):
        plots.decomposition_bars(decomp, pdir / "decomposition.svg")
        plot_files["decomposition"] = "plots/decomposition.svg"

    claims = ledger.to_dict("records")
    for c in claims:
        c["page"] = TRACK_PAGES[c["track"]]
    prov = provenance_rows(results)
    return {
        "config": config,
        "config_yaml": yaml.safe_dump(config, sort_keys=False).rstrip(),
        "title": config.get("site", {}).get("title", "bcr-memory results"),
        "card": results.card,
        "claims": claims,
        "by_track": {t: [c for c in claims if c["track"] == t] for t in TRACK_PAGES},
        "changes": _changes(ledger),
        "headline": eval_context(spec, results, config).headline,
        "site_version": ledger_version(ledger, config),
        "headline_path": path,
        "contexts": [int(c) for c in config["prompts"]["contexts"]],
        "promotion_contexts": promotion_contexts(config),
        "note_ctx": note_ctx,
        "reference": reference,
        "tables": results.tables,
        "sweep": _records(sweep),
        "promotion": _records(promotion),
        "dense_source": promo.attrs.get("dense_source", {}),
        "serving": _records(serving),
        "serving_arms": (arm, baseline),
        "cache_ops": _records(cache_ops),
        "ops_arms": ops_arms,
        "ops_pair": (ops_ours, ops_base),
        "longctx": tables.longctx_summary(results["longctx"].df),
        "decomposition": _records(decomp),
        "paged": [r for r in _records(promotion) if r["decode_path"] != path],
        "peers": _records(peers),
        "dense": _records(_dense_summary(dense)),
        "plots": plot_files,
        "provenance": _records(prov),
        "prov": _first_provenance(results),
        "limitations": limitations(results, config, ledger, reference),
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


def render_pages(data: dict) -> dict[str, str]:
    env = environment()
    return {page: env.get_template(tpl).render(**data) for page, tpl in PAGES.items()}
