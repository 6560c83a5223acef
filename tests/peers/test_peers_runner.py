"""The peer runner in the peer environment (.venv-peers, built by `make`): kvpress's own hooks and
pipeline against the replay, and exactness that fails when a press drops what the answer needs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bcr import io, prompts
from bcr.peers import plan
from bcr.provenance import REPO_ROOT

PEER_PYTHON = REPO_ROOT / ".venv-peers" / "bin" / "python"
MODEL = REPO_ROOT / "models" / "tiny-needle"
PRESSES = ["streaming_llm", "snapkv", "knorm", "expected_attention", "tova", "keydiff"]
MODES = ["question_aware", "question_agnostic"]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    df = prompts.synthetic_prompt_set(512, 2, 7, prompts.NeedleSpec())
    return io.write_parquet(df, tmp_path_factory.mktemp("peers") / "512.parquet")


def run_peer(job: dict, tmp: Path) -> pd.DataFrame:
    problem = plan.environment_problem(PEER_PYTHON)
    assert problem is None, f"{problem} (make builds it: scripts/setup_peers.sh)"
    (tmp / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    cmd = [
        str(PEER_PYTHON),
        "-m",
        "bcr.peers.runner",
        "--job",
        str(tmp / "job.json"),
        "--out",
        str(tmp / "o.parquet"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return pd.read_parquet(tmp / "o.parquet")


def job(prompt_file: Path, points: list[dict], check: int = 0) -> dict:
    return {
        "model": {"path": str(MODEL)},
        "max_new_tokens": 16,
        "query_modes": MODES,
        "threads": 1,
        "prompts": [{"path": str(prompt_file), "context": 512, "plan": points, "check_pipeline": check}],
        "workload": "needle",
    }


def point(press: str, ratio: float, mode: str, **options) -> dict:
    return {"press": press, "compression_ratio": ratio, "query_mode": mode, "setting": "s",
            "stored_fraction": 1 - ratio, "options": options}  # fmt: skip


def test_replay_equals_kvpress_hooks_and_pipeline(prompt_file, tmp_path):
    """Every press: the replayed cache is the one a hooked prefill leaves (aware), and the answer
    is the pipeline's on a word-level tokenizer (agnostic); the cache really shrinks."""
    rows = run_peer(job(prompt_file, [point(p, 0.6, m) for p in PRESSES for m in MODES], check=2), tmp_path)
    assert rows["error"].isna().all(), rows["error"].dropna().tolist()
    assert len(rows) == len(PRESSES) * len(MODES) * 2
    aware, agnostic = rows[rows["query_mode"] == MODES[0]], rows[rows["query_mode"] == MODES[1]]
    assert aware["hook_equal"].astype(bool).all() and aware["pipeline_equal"].isna().all()
    assert agnostic["pipeline_equal"].astype(bool).all() and agnostic["hook_equal"].isna().all()
    assert (rows["stored_fraction"] - 0.4).abs().max() < 0.01
    assert (rows["kv_bytes_stored"] < 0.41 * rows["kv_bytes_dense"]).all()


def test_exact_fails_when_the_press_drops_the_needle(prompt_file, tmp_path):
    """Nothing removed: exact on every prompt; the most recent 5% only (StreamingLLM, the needle
    far behind): the answer is lost, so exactness and the answer fail.  An untimed job (the
    default, ``peers.timed: false``) records no clocks; a timed one does."""
    pts = [point("knorm", 0.0, m) for m in MODES] + [point("streaming_llm", 0.95, m) for m in MODES]
    rows = run_peer(dict(job(prompt_file, pts), timed=False), tmp_path)
    assert rows["ttft_s"].isna().all() and rows["tpot_s"].isna().all()
    kept, dropped = rows[rows["compression_ratio"] == 0.0], rows[rows["compression_ratio"] == 0.95]
    assert kept["exact"].astype(bool).all() and kept["first_divergence"].isna().all()
    assert dropped["dense_answer_correct"].astype(bool).all()
    assert not dropped["exact_answer"].astype(bool).any() and not dropped["answer_correct"].astype(bool).any()
    assert (dropped["first_divergence"] >= 0).all()


def test_a_press_that_fails_lands_in_its_rows_and_the_others_run(prompt_file, tmp_path):
    pts = [point("knorm", 0.5, MODES[0], no_such_option=1), point("snapkv", 0.5, MODES[0])]
    rows = run_peer(dict(job(prompt_file, pts), timed=True), tmp_path)
    bad, good = rows[rows["press"] == "knorm"], rows[rows["press"] == "snapkv"]
    assert (good["ttft_s"] > 0).all() and (good["tpot_s"] > 0).all()
    assert bad["error"].str.contains("no_such_option").all() and bad["exact"].isna().all()
    assert good["error"].isna().all() and good["exact"].notna().all()


def test_masking_wrapping_and_own_call_presses_run_and_leave_nothing_behind(prompt_file, tmp_path):
    """AdaKV and KVzip mask instead of freeing (the cache holds everything, attention reads the
    target fraction); CriticalKV and Merging wrap KeyDiff; Random draws the same when replayed as
    in kvpress's own call (seeded); KVzip runs through its own call.  A press after a masking one
    that removes nothing stays exact: the masks do not leak into the next run.  Timed: every row
    has TTFT and TPOT ratios to the dense runs around the presses."""
    names = ["adakv_keydiff", "kvzip", "criticalkv_keydiff", "merging_keydiff", "random"]
    pts = [point(p, 0.6, m) for p in names for m in MODES] + [point("knorm", 0.0, m) for m in MODES]
    rows = run_peer(dict(job(prompt_file, pts, check=1), timed=True), tmp_path)
    assert rows["error"].isna().all(), rows["error"].dropna().tolist()
    masked = rows[rows["press"].isin(["adakv_keydiff", "kvzip"])]
    assert masked["masks"].astype(bool).all()
    assert (masked["stored_fraction"] > 0.99).all()  # what the cache really holds
    assert (masked["effective_stored_fraction"] - 0.4).abs().max() < 0.02
    freed = rows[rows["press"].isin(["criticalkv_keydiff", "merging_keydiff", "random"])]
    assert not freed["masks"].astype(bool).any() and (freed["stored_fraction"] - 0.4).abs().max() < 0.01
    first = rows[rows["prompt_id"] == rows["prompt_id"].iloc[0]]
    aware = first[(first["query_mode"] == MODES[0]) & (first["press"] != "kvzip")]
    assert aware["hook_equal"].astype(bool).all()  # random included: the same seeded draw
    assert first.loc[first["press"] == "kvzip", "hook_equal"].isna().all()  # its own call: no replay
    agnostic = first[first["query_mode"] == MODES[1]]
    assert agnostic["pipeline_equal"].astype(bool).all()
    assert rows.loc[rows["press"] == "knorm", "exact"].astype(bool).all()
    assert (rows["tpot_ratio"] > 0).all() and (rows["ttft_ratio"] > 0).all()
    assert (rows["dense_tpot_s"] > 0).all()
