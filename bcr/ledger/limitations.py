"""Limitations generated from the data: model, hardware, contexts, sample sizes, missing evidence.

Written from what the result files and the config say, so the page cannot claim more (or less)
than this run measured — the note's own limitations section, recomputed per run.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bcr.ledger.evidence import Results, provenance_rows


def _item(level: str, title: str, text: str) -> dict[str, str]:
    return {"level": level, "title": title, "text": text}


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
            )
        )
    else:
        out.append(_item("info", "Model", f"`{name}` ({size}), as in the note ({reference.get('model')})."))
    out.append(
        _item(
            "warning",
            "One model",
            "Every result comes from a single model: generalisation across models is untested.",
        )
    )
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
            )
        )
    return out


def _contexts(results: Results, config: dict, reference: dict) -> list[dict]:
    ours = [int(c) for c in config["prompts"]["contexts"]]
    ref = config.get("site", {}).get("reference_contexts") or ours
    out = []
    if [int(c) for c in ref] != ours:
        pairs = ", ".join(f"{o} for {r}" for o, r in zip(ours, ref, strict=True))
        out.append(_item("warning", "Context lengths", f"Our contexts stand in for the note's: {pairs}."))
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
        ("dense", ["context"], "Dense baseline prompts per context"),
        ("tiered_sweep", ["setting", "decode_path"], "Sweep prompts per setting/decode path"),
        (
            "tiered_promotion",
            ["context", "setting", "decode_path"],
            "Promotion prompts per context/setting/path",
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


def limitations(
    results: Results, config: dict, ledger: pd.DataFrame, reference: dict
) -> list[dict[str, Any]]:
    items = [
        *_model(results, config, reference),
        *_hardware(results),
        *_contexts(results, config, reference),
        *_samples(results, ledger, reference),
        *_missing(results),
        *_mixed(results),
        _item(
            "info",
            "Exactness",
            f"`exact` means greedy tokens identical to dense over the first "
            f"{config['generation']['max_new_tokens']} generated tokens (stopping at EOS); it says nothing "
            "about longer generations.",
        ),
    ]
    return items
