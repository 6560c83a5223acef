"""Limitations generated from the data: model, hardware, contexts, sample sizes, missing evidence.

Written from what the result files and the config say, so the page cannot claim more (or less)
than this run measured — the note's own limitations section, recomputed per run.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from bcr.config import resolve_base
from bcr.contracts import DENSE_PATH
from bcr.ledger import tables
from bcr.ledger.evidence import Results, provenance_rows
from bcr.ledger.stats import geomean

# The limitations a claim can point at (``caveats:`` in config/claims.yaml): the item's anchor on the
# limitations page and the short marker shown beside the verdict.  A caveat shows only when this run
# has that limitation (a GPU run has no "CPU measurements" item, so no marker).
CAVEATS = {
    "model": "stand-in model",
    "one-model": "one model",
    "contexts": "stand-in contexts",
    "cpu": "CPU run",
    "tiered-budget": "fixed budget of this setting",
    "exactness": "short generations",
    "local-engine": "local engine, not SGLang's server",
    "scattered-bed": "scattered bed: outlier keys",
}
# Caveats a family's verdicts carry whatever the claim file says (the family's own construction).
FAMILY_CAVEATS = {"scattered": "scattered-bed"}


def _item(level: str, title: str, text: str, anchor: str | None = None) -> dict[str, str]:
    slug = anchor or re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return {
        "level": level,
        "title": title,
        "text": text,
        "id": f"lim-{slug}",
        "short": CAVEATS.get(slug, ""),
        "summary": "",
    }


def _counts(df: pd.DataFrame, by: list[str]) -> str:
    g = df.groupby(by).size()
    if g.nunique() == 1:
        return f"{g.iloc[0]} each, in all {len(g)} groups"
    return ", ".join(f"{'/'.join(map(str, k if isinstance(k, tuple) else (k,)))}: {v}" for k, v in g.items())


def _model(results: Results, config: dict, reference: dict) -> list[dict]:
    card = results.card or {}
    name = card.get("hub_id") or card.get("name") or config["model"].get("hub_id") or config["model"]["name"]
    params = card.get("parameters")
    size = f"{params:,} parameters" if isinstance(params, int) else "size unknown (no model card)"
    out = []
    if config["model"]["source"] == "local":
        out.append(
            _item(
                "warning",
                "Model",
                f"`{name}` ({size}) is a tiny model trained on a synthetic single-needle task; it stands in "
                f"for the note's {reference.get('model', 'model')}. Exactness on it tests the mechanism "
                "(greedy outputs that depend on a few distant pages), not the 7B model's behaviour.",
                "model",
            )
        )
    else:
        out.append(_item("info", "Model", f"`{name}` ({size}), as in the note ({reference.get('model')})."))
    frontier = results["tiered_frontier"].df
    models = sorted(set(frontier["model"])) if frontier is not None and len(frontier) else [name]
    if len(models) < 2:
        text = "Every result comes from a single model: generalisation across models is untested."
    else:
        text = (
            f"Only the exactness frontier (at the sweep context) runs on more than one model ({', '.join(models)}); "
            f"the sweep, promotion, controls and latency come from `{name}` alone."
        )
    out.append(_item("warning", "One model", text, "one-model"))
    return out


def _hardware(results: Results) -> list[dict]:
    prov = provenance_rows(results)
    devices = sorted({d for v in prov["device"].dropna() for d in str(v).split(", ")}) if len(prov) else []
    if not devices:
        return [_item("warning", "Hardware", "No result file records a device.")]
    out = [
        _item(
            "info",
            "Hardware",
            "Devices recorded by the result files: " + ", ".join(f"`{d}`" for d in devices),
        )
    ]
    if any(d.startswith("cpu") for d in devices):
        out.append(
            _item(
                "warning",
                "CPU measurements",
                "On CPU, CUDA peak memory is not measured (null, never estimated), so peak-VRAM claims stay "
                "`not yet`; latencies come from a few shared CPU cores and are noisier than the note's GPUs.",
                "cpu",
            )
        )
    return out


def _serving_engine(results: Results) -> list[dict]:
    """Serving rows from the local engine (the CPU stand-in for SGLang's server) say so."""
    engines: set[str] = set()
    for name in ("serving_requests", "longctx"):
        table = results.tables.get(name)
        if table is not None and table.present and "engine" in table.df.columns:
            engines |= set(table.df["engine"].astype(str))
    if "local" not in engines:
        return []
    return [
        _item(
            "warning",
            "Local serving engine",
            "Serving and long-context rows come from the local engine (`bcr/serving/local.py`): the "
            "configured model behind SGLang's `/generate` API with each arm's real SGLang cache over a "
            "real KV pool, but one request at a time in Python, not SGLang's scheduler, batching or "
            "kernels. Its latency ratios say whether a cache's own work shows through a real reuse path; "
            "they do not measure SGLang's server on a GPU (`config/a100.yaml` does).",
            "local-engine",
        )
    ]


def _contexts(results: Results, config: dict, reference: dict) -> list[dict]:
    ours = [int(c) for c in config["prompts"]["contexts"]]
    ref = config.get("site", {}).get("reference_contexts") or ours
    out = []
    if [int(c) for c in ref] != ours:
        pairs = ", ".join(f"{o} for {r}" for o, r in zip(ours, ref, strict=True))
        out.append(
            _item(
                "warning",
                "Context lengths",
                f"Our contexts stand in for the note's: {pairs} (same ratios, shorter). Every table shows "
                "the note's context beside ours.",
                "contexts",
            )
        )
    card = results.card or {}
    max_ctx = config["model"].get("max_context") or card.get("max_position_embeddings")
    new = int(config["generation"]["max_new_tokens"])
    if max_ctx:
        for c in ours:
            if c + new > int(max_ctx):
                out.append(
                    _item(
                        "warning",
                        f"Context {c}",
                        f"{c} prompt tokens + {new} generated tokens exceed the model's maximum context of "
                        f"{max_ctx}: generation runs past the nominal limit (the note's 32K caveat).",
                    )
                )
    note = reference.get("limitations", {}).get("context_warning")
    if note:
        out.append(_item("info", "The note's context caveat", f"The note: {note}."))
    return out


def _samples(results: Results, ledger: pd.DataFrame, reference: dict) -> list[dict]:
    out = []
    specs = [
        ("dense", ["workload", "context"], "Dense baseline prompts per family/context"),
        (
            "tiered_sweep",
            ["query_mode", "setting", "decode_path"],
            "Sweep prompts per mode/setting/decode path",
        ),
        (
            "tiered_promotion",
            ["workload", "query_mode", "context", "setting", "decode_path"],
            "Promotion prompts per family/mode/context/setting/path",
        ),
        ("serving_requests", ["workload", "arm"], "Serving requests per workload/arm"),
        ("longctx", [], "Long-context prompts checked"),
        ("peers", ["press"], "Peer rows per press"),
    ]
    for name, by, title in specs:
        t = results[name]
        if not t.present:
            continue
        text = _counts(t.df, by) if by else str(len(t.df))
        out.append(_item("info", title, text))
    note_n = reference.get("limitations", {}).get("prompts_per_promotion_context")
    if note_n:
        out.append(
            _item("info", "The note's sample", f"The note's promotion used {note_n} prompts per context.")
        )
    small = ledger[ledger["reason"].str.contains("minimum", na=False) & (ledger["verdict"] == "not yet")]
    for r in small.itertuples():
        out.append(_item("warning", f"Sample too small: {r.claim_id}", r.reason))
    return out


def _missing(results: Results) -> list[dict]:
    gone = [t for t in results.tables.values() if not t.present]
    if not gone:
        return []
    text = "; ".join(t.reason for t in gone)
    return [_item("warning", "Evidence not produced by this run", text + ". Their claims show `not yet`.")]


def _mixed(results: Results) -> list[dict]:
    prov = provenance_rows(results)
    out = []
    for col, what in (("git_commit", "commits"), ("config_hash", "configs")):
        vals = sorted({v for cell in prov[col].dropna() for v in str(cell).split(", ")}) if len(prov) else []
        if len(vals) > 1:
            out.append(
                _item(
                    "warning",
                    f"Mixed {what}",
                    f"The result files come from {len(vals)} different {what} ({', '.join(vals)}); "
                    "see the provenance page for which file came from which.",
                )
            )
    return out


def _scattered_bed(config: dict) -> list[dict]:
    """What the synthetic scattered family is (bcr/prompts.py), where a run measures it: each value
    token is the only token of its vocabulary band in the prompt, so its key is an outlier by
    construction and a key-outlier detector finds it without reading the question."""
    synthetic = config["prompts"].get("renderer", "synthetic") == "synthetic"
    if not synthetic or "scattered" not in config["prompts"].get("workloads", []):
        return []
    return [
        _item(
            "warning",
            "Scattered bed",
            "In the synthetic `scattered` family each of the answer's value tokens sits alone at its "
            "own position, and each is the only token of its vocabulary band in the prompt "
            "(`bcr/prompts.py`, `synthetic_example`): its key and value are outliers by "
            "construction. A page or token selector that scores reconstruction error or key "
            "outliers can find them without the question -- the tiered exceptions' "
            "`reconstruction` signal does exactly that, and the `needle` family's value tokens are "
            "band-unique too, so its exception settings share this -- while on natural text the "
            "tokens an answer needs are not marked this way. Every `scattered` verdict carries "
            "this marker.",
            "scattered-bed",
        )
    ]


def _compressed_layers(results: Results, setting: str) -> int | None:
    """How many layers the runs of ``setting`` compressed (the tiered rows' ``band_layers``)."""
    for name in ("tiered_promotion", "tiered_sweep"):
        df = results[name].df
        if df is None or "band_layers" not in df:
            continue
        rows = df[(df["setting"] == setting) & (df["decode_path"] != DENSE_PATH)]
        if len(rows):
            return len(rows["band_layers"].iloc[0])
    return None


def _bound(dense: float, retain: float, floor: float) -> tuple[float, float]:
    """(the stored-fraction floor of a compressed layer, the resulting cap on C)."""
    f = retain + (1.0 - retain) * floor
    return f, 1.0 / (dense + (1.0 - dense) * f)


def _tiered_budget(
    results: Results, config: dict, headline: str | None, study: dict | None, study_name: str
) -> list[dict]:
    """What caps C for the headline setting here: its dense layers and its phantom budget, vs the study config."""
    if not headline or headline not in ((config.get("tiered") or {}).get("settings") or {}):
        return []
    s = resolve_base(config["tiered"]["settings"], headline)
    lo, hi = config["tiered"]["bands"][s["band"]]
    promo = tables.tiered_rows(results["tiered_promotion"].df, results["dense"].df)
    rows = promo[promo["setting"] == headline] if len(promo) else promo
    layers = int((results.card or {}).get("layers") or 0)
    compressed = _compressed_layers(results, headline)
    if layers <= 0 or compressed is None:
        return []
    d = 1.0 - compressed / layers
    floor = s["phantoms_per_page"] / s["page_size"]
    f, cap = _bound(d, s["retain"], floor)
    text = (
        f"`{headline}` compresses {compressed} of the model's {layers} layers (band `{s['band']}`, "
        f"{lo:g}–{hi:g} of the depth) and keeps {d:.0%} of them dense, so with a "
        f"stored fraction f in the compressed layers C ≤ 1/({d:.2f} + {1 - d:.2f}·f). In a compressed layer "
        f"it keeps at least {s['retain']:.0%} of the tokens exact (`retain`) and every summarised page stores "
        f"{s['phantoms_per_page']} phantom tokens of its {s['page_size']} ({floor:.3g}), so f ≥ {f:.3g} before "
        f"the sink, recent and surprise pages, and C ≤ {cap:.3g}x."
    )
    if len(rows):
        largest = int(rows["context"].max())
        c = geomean(rows[rows["context"] == largest]["compression"])
        text += f" Measured here: C = {c:.3g}x at context {largest}."
    if study and headline in ((study.get("tiered") or {}).get("settings") or {}):
        t = resolve_base(study["tiered"]["settings"], headline)
        t_lo, t_hi = study["tiered"]["bands"][t["band"]]
        sd = 1.0 - (t_hi - t_lo)  # the band's share of depth on a deep model
        sfloor = t["phantoms_per_page"] / t["page_size"]
        _, scap = _bound(sd, t["retain"], sfloor)
        text += (
            f" The study config (`{study_name}`) stores {t['phantoms_per_page']} of {t['page_size']} tokens per "
            f"summarised page ({sfloor:.3g}) with about {sd:.0%} of the layers dense: the same bound there "
            f"is C ≤ {scap:.3g}x."
        )
    text += (
        f" So a compression claim with a threshold above {cap:.3g}x cannot be supported by this setting in "
        "this config, whatever the method does: the verdict is decided by these fixed budgets of the "
        "stand-in configuration, not by a failed replication."
    )
    item: dict[str, Any] = _item(
        "warning", "Compression bound of the headline setting", text, "tiered-budget"
    )
    item["cap"] = {"setting": headline, "value": cap}
    item["summary"] = (
        f"`{headline}` keeps {d:.0%} of the layers dense and stores {s['phantoms_per_page']} of {s['page_size']} "
        f"tokens per summarised page, which caps C near {cap:.3g}x in this config"
    )
    return [item]


def limitations(
    results: Results,
    config: dict,
    ledger: pd.DataFrame,
    reference: dict,
    *,
    headline: str | None = None,
    study: dict | None = None,
    study_name: str = "config/a100.yaml",
) -> list[dict[str, Any]]:
    items = [
        *_model(results, config, reference),
        *_hardware(results),
        *_serving_engine(results),
        *_contexts(results, config, reference),
        *_tiered_budget(results, config, headline, study, study_name),
        *_samples(results, ledger, reference),
        *_missing(results),
        *_mixed(results),
        *_scattered_bed(config),
        _item(
            "info",
            "Exactness",
            "A prompt counts as exact when its answer span (the value and EOS here; the shortest reply "
            "holding the answer for text prompts) is identical to dense, the note's claim; the whole "
            f"trajectory of {config['generation']['max_new_tokens']} generated tokens"
            f"{' (stopping at EOS)' if config['generation'].get('stop_at_eos', True) else ', past EOS,'} is "
            "reported beside it as the stronger test. Neither says anything about longer generations.",
            "exactness",
        ),
    ]
    return items
