"""The peers job (main environment): which stored fractions, and a failed environment recorded."""

from __future__ import annotations

import pandas as pd
import pytest

from bcr import contracts as C
from bcr import io, prompts
from bcr.peers import plan
from bcr.provenance import REPO_ROOT


def frontier(fractions: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"setting": s, "stored_fraction": f + d} for s, f in fractions.items() for d in (-0.01, 0.0, 0.01)]
    )


def test_points_are_the_headline_and_the_frontier_point_storing_most_below_it():
    promoted = {"question_aware": {"most_compressed": "b", "query_mode": "question_aware"}}
    summary = {"question_aware": pd.DataFrame({"setting": ["a", "b"], "stored_fraction": [0.6, 0.2]})}
    front = {"question_aware": frontier({"x": 0.19, "y": 0.10, "z": 0.25})}
    got = plan.points(promoted, summary, front, lower=1)[0]["question_aware"]
    assert [p["setting"] for p in got] == ["b", "x"]
    assert got[0]["stored_fraction"] == 0.2 and got[1]["stored_fraction"] == pytest.approx(0.19)
    assert [p["setting"] for p in plan.points(promoted, summary, front, lower=2)[0]["question_aware"]] == [
        "b",
        "x",
        "y",
    ]
    with pytest.raises(ValueError, match="no row for 'b'"):
        plan.points(promoted, {"question_aware": summary["question_aware"].head(1)}, front, 1)
    by_mode, missing = plan.points({"question_agnostic": {"most_compressed": None}}, {}, {}, 1)
    assert by_mode == {} and "promoted no setting" in missing["question_agnostic"]


def test_contexts_and_ratio():
    config = {
        "prompts": {"contexts": [2048, 4096, 8192]},
        "peers": {"contexts": ["sweep", "largest", 4096, 8192]},
    }
    assert plan.peer_contexts(config) == [2048, 8192, 4096]
    cfg = {
        "model": {"name": "m", "source": "local", "path": "models/tiny-needle"},
        "generation": {"max_new_tokens": 64},
        "runtime": {"threads": 2, "device": "cpu", "seed": 0},
        "prompts": {"contexts": [2048, 8192]},
        "peers": {
            "presses": ["snapkv"],
            "press_options": {"snapkv": {"window_size": 8}},
            "check_pipeline": 1,
        },
    }
    job = plan.build_job(
        cfg, "needle", {2048: "a", 8192: "b"}, {"question_aware": [{"setting": "s", "stored_fraction": 0.2}]}
    )
    assert job["prompts"][0]["plan"][0]["compression_ratio"] == pytest.approx(0.8)
    assert job["prompts"][0]["plan"][0]["options"] == {"window_size": 8}
    assert [p["check_pipeline"] for p in job["prompts"]] == [
        1,
        0,
    ]  # the word-level check at the sweep context


def test_a_missing_broken_or_failed_environment_is_recorded_in_every_row(tmp_path):
    """Every planned (prompt, press, point) gets a row with its prompt id and the failed step, the
    rows pass the dense agreement and the writer with the full contract (the crash of f64fb08)."""
    prompt_file = io.write_parquet(
        prompts.synthetic_prompt_set(256, 3, 7, prompts.NeedleSpec()), tmp_path / "256.parquet"
    )
    ids = pd.read_parquet(prompt_file)["prompt_id"].tolist()
    job = {"workload": "needle", "n_prompts": 2, "threads": 1, "prompts": [{"context": 256, "path": str(prompt_file), "plan": [
        {"press": "snapkv", "compression_ratio": 0.8, "setting": "s", "stored_fraction": 0.2, "query_mode": "question_aware"}]}]}  # fmt: skip
    exe = tmp_path / "venv" / "bin" / "python"
    rows, versions = plan.run_job(job, exe, log=lambda s: None)
    assert versions == {} and rows["error"].str.contains("does not exist").all()
    assert rows["prompt_id"].tolist() == ids[:2]
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'no kvpress here' >&2\nexit 3\n")
    broken.chmod(0o755)
    rows, _ = plan.run_job(job, broken, log=lambda s: None)
    assert rows["error"].str.contains("exit 3: no kvpress here").all() and len(rows) == 2
    not_executable = tmp_path / "plain-file"
    not_executable.write_text("")
    rows, _ = plan.run_job(job, not_executable, log=lambda s: None)
    assert rows["error"].str.contains("cannot run").all() and rows["prompt_id"].tolist() == ids[:2]
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / plan.PEER_STAMP_FAILED).write_text(
        "step: pip install -r requirements/lock/peers.txt\nno index"
    )
    rows, _ = plan.run_job(job, exe, log=lambda s: None)
    assert (
        rows["error"].str.contains("build failed").all() and rows["error"].str.contains("pip install").all()
    )
    dense = {256: pd.DataFrame({"prompt_id": ids, "output_ids": [[1, 2]] * 3})}
    rows["dense_equal_main"] = plan.dense_agreement(rows, dense)
    assert rows["dense_equal_main"].isna().all()
    out = tmp_path / "rows.parquet"
    config = {"run_name": "t", "model": {"name": "m"}, "runtime": {"device": "cpu", "threads": 1}}
    plan.write(rows, {}, out, config)
    written = pd.read_parquet(out)
    assert set(C.PEERS_RUN_COLUMNS) <= set(written.columns) and written["exact"].isna().all()
    assert written["prompt_id"].tolist() == ids[:2]


def test_a_mode_without_a_matched_setting_has_a_row_per_prompt_and_press(tmp_path):
    prompt_file = io.write_parquet(
        prompts.synthetic_prompt_set(256, 3, 7, prompts.NeedleSpec()), tmp_path / "256.parquet"
    )
    config = {"peers": {"presses": ["snapkv", "keydiff"], "n_prompts": None}}
    rows = plan.unplanned_rows(config, "needle", {256: str(prompt_file)}, "question_agnostic", "nothing")
    assert len(rows) == 6 and rows["prompt_id"].notna().all() and (rows["error"] == "nothing").all()


def test_dense_agreement_compares_with_the_main_baseline():
    rows = pd.DataFrame(
        {"context": [512, 512, 512], "prompt_id": ["a", "b", "c"], "dense_ids": [[1, 2], [1, 3], None]}
    )
    dense = {512: pd.DataFrame({"prompt_id": ["a", "b"], "output_ids": [[1, 2, 9], [1, 2, 9]]})}
    assert plan.dense_agreement(rows, dense).tolist() == [True, False, None]


def test_the_config_schema_names_every_press_the_runner_knows():
    """The schema's press names and the runner's registry are one list (the runner is the home)."""
    import yaml

    from bcr.peers.runner import PRESSES

    schema = yaml.safe_load((REPO_ROOT / "bcr" / "schemas" / "peers.schema.yaml").read_text())
    assert schema["$defs"]["press"]["enum"] == list(PRESSES)
