"""Render result pages (Markdown) from Parquet with Jinja templates."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pandas as pd

from bcr import io

TEMPLATES = Path(__file__).resolve().parent / "templates"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = lambda v, spec=".3f": "—" if v is None or pd.isna(v) else format(v, spec)
    return env


def _dense_table(results: Path) -> pd.DataFrame:
    files = sorted((results / "dense").glob("*.parquet"), key=lambda p: int(p.stem))
    if not files:
        return pd.DataFrame()
    df = pd.concat([io.read_parquet(f) for f in files], ignore_index=True)
    g = df.groupby("context")
    out = pd.DataFrame(
        {
            "n": g.size(),
            "accuracy": g["answer_correct"].mean(),
            "ttft_s": g["ttft_s"].median(),
            "tpot_s": g["tpot_s"].median(),
            "kv_mib": g["kv_bytes"].median() / 2**20,
            "peak_gib": g["peak_mem_bytes"].max() / 2**30,
        }
    ).reset_index()
    out.attrs["provenance"] = df.iloc[0][
        ["run_id", "git_commit", "model", "device", "torch", "transformers"]
    ].to_dict()
    return out


def render_pages(results: Path, config: dict) -> dict[str, str]:
    env = environment()
    card = io.read_json(results / "model" / "card.json")
    dense = _dense_table(results)
    pages = {
        "baseline.md": env.get_template("baseline.md.j2").render(
            card=card,
            dense=dense.to_dict("records"),
            prov=dense.attrs.get("provenance", {}),
            config=config,
        )
    }
    return pages
