"""The peers job for one prompt family: what to run (from the sweep's results), and its rows.

The stored fractions come from our own results at the sweep context, per query mode: the headline
(the promoted setting storing the least, ``promoted/{mode}.json``'s ``most_compressed``), and the
``lower_points`` frontier points of the primary model storing the most below it.  Each press runs at
``compression_ratio`` = 1 − that fraction (kvpress's ratio is the fraction removed).

The runner (:mod:`bcr.peers.runner`) runs in the peer environment's interpreter; if that
interpreter is missing, its build failed, or the runner fails, every planned row is written with
the step that failed in ``error``, so the ledger says why and no other track loses anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bcr import contracts as C
from bcr import io, provenance

PEER_STAMP_FAILED = ".bcr-peers-failed"  # scripts/setup_peers.sh leaves the failed step's log here


def headline_point(promoted: dict, sweep_summary: pd.DataFrame) -> dict:
    """The sweep's most compressed promoted setting and its median stored fraction."""
    setting = promoted.get("most_compressed")
    if not setting:
        raise ValueError(f"promoted/{promoted.get('query_mode')}.json names no most_compressed setting")
    rows = sweep_summary[sweep_summary["setting"] == setting]
    if rows.empty:
        raise ValueError(f"the sweep summary has no row for {setting!r}")
    return {"setting": setting, "stored_fraction": float(rows["stored_fraction"].iloc[0])}


def lower_points(frontier: pd.DataFrame, below: float, count: int) -> list[dict]:
    """The ``count`` frontier points storing the most, strictly below ``below`` (median over prompts)."""
    if count <= 0 or frontier.empty:
        return []
    med = frontier.groupby("setting")["stored_fraction"].median()
    med = med[med < below].sort_values(ascending=False)
    return [{"setting": s, "stored_fraction": float(f)} for s, f in med.head(count).items()]


def points(
    promoted: dict[str, dict],
    summaries: dict[str, pd.DataFrame],
    frontiers: dict[str, pd.DataFrame],
    lower: int,
) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Per query mode: the headline point, then the lower frontier points; and per mode without a
    headline (the sweep promoted nothing), why."""
    out, missing = {}, {}
    for mode, prom in promoted.items():
        if not prom.get("most_compressed"):
            missing[mode] = f"no matched setting: the sweep promoted no setting in {mode}"
            continue
        head = headline_point(prom, summaries[mode])
        out[mode] = [head, *lower_points(frontiers.get(mode, pd.DataFrame()), head["stored_fraction"], lower)]
    return out, missing


def timed(config: dict, workload: str) -> bool:
    """Whether this family's peer job keeps clocks (``peers.timed``: true, false, or ``primary``:
    the primary family's only, where the speed claim is made); a timed job runs alone."""
    value = config["peers"].get("timed", False)
    return value is True or (value == "primary" and workload == config["prompts"]["workloads"][0])


def peer_contexts(config: dict) -> list[int]:
    """The sweep context and the largest (``peers.contexts``: ``sweep``, ``largest`` or numbers)."""
    contexts = [int(c) for c in config["prompts"]["contexts"]]
    named = {"sweep": contexts[0], "largest": max(contexts)}
    want = [named.get(c, c) for c in config["peers"]["contexts"]]
    return list(dict.fromkeys(int(c) for c in want))


def check_config(config: dict) -> list[tuple[str, str]]:
    """Cross-field checks of ``peers`` (the schema checks each key alone)."""
    peers = config.get("peers")
    if not peers:
        return []
    contexts = [int(c) for c in config["prompts"]["contexts"]]
    bad = [c for c in peers["contexts"] if not isinstance(c, str) and int(c) not in contexts]
    problems = []
    if bad:
        problems.append(("peers.contexts", f"{bad} not in prompts.contexts {contexts}"))
    modes = (config.get("tiered") or {}).get("query_modes") or []
    if not modes:
        problems.append(("peers", "needs tiered.query_modes: the stored fractions come from the sweep"))
    return problems


def build_job(config: dict, workload: str, prompts: dict[int, str], by_mode: dict[str, list[dict]]) -> dict:
    """The runner's job: the model, every context's prompts, and per context the planned points
    (the headline everywhere, the lower frontier points at the sweep context, where ours exist)."""
    peers = config["peers"]
    model = config["model"]
    path = (
        Path(model["path"]) if model.get("source") == "local" else Path(model.get("hub_id") or model["name"])
    )
    if model.get("source") == "local" and not path.is_absolute():
        path = provenance.REPO_ROOT / path
    sweep = int(config["prompts"]["contexts"][0])
    options = peers.get("press_options") or {}

    def plan(context: int) -> list[dict]:
        # the lower frontier points only where the frontier (ours) is measured: the sweep context
        return [
            {
                "press": press,
                "options": options.get(press) or {},
                "query_mode": mode,
                "setting": p["setting"],
                "stored_fraction": p["stored_fraction"],
                "compression_ratio": round(1.0 - p["stored_fraction"], 6),
            }
            for mode, pts in by_mode.items()
            for p in (pts if context == sweep else pts[:1])
            for press in peers["presses"]
        ]

    return {
        "model": {
            "path": str(path),
            "dtype": model.get("dtype", "float32"),
            "attn_implementation": model.get("attn_implementation", "sdpa"),
            "device": config["runtime"]["device"],
        },
        "max_new_tokens": int(config["generation"]["max_new_tokens"]),
        "query_modes": list(by_mode),
        "threads": int(config["runtime"]["threads"]),
        "seed": int(config["runtime"].get("seed", 0)),
        "n_prompts": peers.get("n_prompts"),
        "timed": timed(config, workload),
        "prompts": [
            {
                "path": str(p),
                "context": c,
                "plan": plan(c),
                # the checks on the smallest context run (the sweep's, unless only larger ones run)
                "check_pipeline": int(peers.get("check_pipeline", 0)) if c == min(prompts) else 0,
            }
            for c, p in prompts.items()
        ],
        "workload": workload,
    }


def peer_python(config: dict) -> Path:
    exe = Path(config["peers"]["python"])
    return exe if exe.is_absolute() else provenance.REPO_ROOT / exe


def environment_problem(exe: Path) -> str | None:
    """Why the peer interpreter cannot run (its build failed or never ran), else None."""
    venv = exe.parent.parent
    failed = venv / PEER_STAMP_FAILED
    if failed.is_file():
        return f"peer environment: build failed ({venv}): {failed.read_text().strip()[-400:]}"
    if not exe.is_file():
        return f"peer environment: {exe} does not exist (scripts/setup_peers.sh builds it)"
    return None


def prompt_ids(path: str | Path, n: int | None) -> list[str]:
    """The ids of the prompts a job runs from one prompt set (its first ``n``; all when None)."""
    ids = io.read_parquet(path, ["prompt_id"], columns=["prompt_id"])["prompt_id"].tolist()
    return ids if n is None else ids[: int(n)]


def failed_rows(job: dict, error: str) -> pd.DataFrame:
    """One row per planned (context, prompt, press, point, mode) with no measurement and the failed
    step in ``error``: the same rows a measured job has, so every reader finds its prompts."""
    rows = [
        {
            "press": p["press"],
            "compression_ratio": p["compression_ratio"],
            "setting_matched": p["setting"],
            "target_stored_fraction": p["stored_fraction"],
            C.QUERY_MODE: p["query_mode"],
            C.WORKLOAD: job["workload"],
            "context": item["context"],
            "prompt_id": pid,
            "error": error,
        }
        for item in job["prompts"]
        for pid in prompt_ids(item["path"], job["n_prompts"])
        for p in item["plan"]
    ]
    return pd.DataFrame(rows)


def unplanned_rows(
    config: dict, workload: str, prompts: dict[int, str], mode: str, reason: str
) -> pd.DataFrame:
    """One row per (press, context, prompt) of a mode that has nothing to match: no measurement, the reason."""
    n = config["peers"].get("n_prompts")
    rows = [
        {
            "press": press,
            C.QUERY_MODE: mode,
            C.WORKLOAD: workload,
            "context": c,
            "prompt_id": pid,
            "error": reason,
        }
        for c, path in prompts.items()
        for pid in prompt_ids(path, n)
        for press in config["peers"]["presses"]
    ]
    return pd.DataFrame(rows)


def run_job(job: dict, exe: Path, log: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict]:
    """Run the job in the peer interpreter; (rows, the peer environment's package versions)."""
    problem = environment_problem(exe)
    if problem:
        log(problem)
        return failed_rows(job, problem), {}
    with tempfile.TemporaryDirectory(prefix="bcr-peers-") as tmp:
        job_path, out = Path(tmp) / "job.json", Path(tmp) / "rows.parquet"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ, PYTHONPATH=str(provenance.REPO_ROOT), OMP_NUM_THREADS=str(job["threads"]))
        cmd = [str(exe), "-m", "bcr.peers.runner", "--job", str(job_path), "--out", str(out)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        except OSError as exc:  # not an executable at all
            log(f"peer environment: {exe}: {exc}")
            return failed_rows(job, f"peer environment: {exe} cannot run: {exc}"), {}
        log(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return failed_rows(job, f"runner: exit {proc.returncode}: {tail[0][-300:]}"), {}
        rows = pd.read_parquet(out)
        versions = json.loads(Path(str(out) + ".versions.json").read_text())
    return rows, versions


def dense_agreement(rows: pd.DataFrame, dense: dict[int, pd.DataFrame]) -> pd.Series:
    """Per row: the peer environment's dense tokens equal the main environment's dense baseline
    (``output_ids``, prefilled context then question like question-agnostic) over the same length."""
    main = {
        (int(c), pid): list(ids)
        for c, df in dense.items()
        for pid, ids in zip(df["prompt_id"], df["output_ids"], strict=True)
    }

    def same(r: pd.Series) -> bool | None:
        ref, mine = main.get((int(r["context"]), r.get("prompt_id"))), r.get("dense_ids")
        if ref is None or mine is None or isinstance(mine, float):  # a failed row has no tokens
            return None
        mine = [int(t) for t in mine]
        return [int(t) for t in ref[: len(mine)]] == mine

    return rows.apply(same, axis=1) if len(rows) else pd.Series(dtype=object)


def write(rows: pd.DataFrame, versions: dict, out: str | Path, config: dict) -> None:
    """The rows with the run's provenance, the peer environment's versions in it, and every column."""
    df = rows.copy()
    for col in C.PEERS_RUN_COLUMNS:
        if col not in df.columns:
            df[col] = None
    prov = provenance.provenance(config, config["runtime"]["device"])
    prov["transformers"] = versions.get("transformers", prov["transformers"])
    prov["torch"] = versions.get("torch", prov["torch"])
    df["kvpress"] = versions.get("kvpress")
    io.write_parquet(provenance.attach(df[[*C.PEERS_RUN_COLUMNS, "kvpress"]], prov), out)
