"""Bad input files get one clear line naming the file and what is wrong, never a traceback: a
missing file, a file that is not Parquet (or JSON, or a checkpoint), a Parquet file missing a
contract column."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bcr import io, prompts
from bcr.cli import main

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "config.yaml"


@pytest.fixture
def bcr(capfd):
    """``bcr ARGS`` through the CLI's own entry point, in this process (one import of torch for all):
    its exit code and what it printed."""

    def run(*args: str) -> subprocess.CompletedProcess:
        capfd.readouterr()
        code = main(list(args))
        out = capfd.readouterr()
        return subprocess.CompletedProcess(["bcr", *args], code, out.out, out.err)

    return run


def assert_clear(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in line, line


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad")
    good = prompts.synthetic_prompt_set(256, 1, 7, prompts.NeedleSpec())
    not_parquet = tmp / "prompts.parquet"
    not_parquet.write_text("prompt_id,input_ids\na,1 2 3\n")
    no_column = io.write_parquet(good.drop(columns=["input_ids"]), tmp / "no_ids.parquet")
    bad_json = tmp / "promoted.json"
    bad_json.write_text('{"run": ["middle",]}')
    return {"not_parquet": not_parquet, "no_column": no_column, "bad_json": bad_json, "dir": tmp}


def tiered_run(bcr, prompts_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return bcr(
        "tiered", "run", "--config", str(CONFIG), "--settings", "middle", "--context", "2048",
        "--prompts", str(prompts_path), "--out", "/dev/null", "--timed-prompts", "0", *extra,
    )  # fmt: skip


def test_a_missing_prompt_file_is_named(bcr, files):
    assert_clear(tiered_run(bcr, files["dir"] / "nope.parquet"), "nope.parquet", "no such Parquet file")


def test_a_file_that_is_not_parquet_is_named(bcr, files):
    assert_clear(
        tiered_run(bcr, files["not_parquet"]), str(files["not_parquet"]), "not a readable Parquet file"
    )


def test_a_parquet_file_missing_a_contract_column_is_named(bcr, files):
    assert_clear(tiered_run(bcr, files["no_column"]), str(files["no_column"]), "missing columns", "input_ids")


def test_malformed_json_is_named_with_its_position(bcr, files):
    proc = bcr(
        "tiered", "run", "--config", str(CONFIG), "--promoted", str(files["bad_json"]), "--context", "2048",
        "--prompts", str(files["no_column"]), "--out", "/dev/null",
    )  # fmt: skip
    assert_clear(proc, str(files["bad_json"]), "not valid JSON", "line 1")


def test_dense_run_names_a_bad_prompt_file(bcr, files):
    proc = bcr(
        "dense", "run", "--config", str(CONFIG), "--prompts", str(files["not_parquet"]), "--out", "/dev/null"
    )
    assert_clear(proc, str(files["not_parquet"]), "not a readable Parquet file")


def test_timing_over_exact_rows_needs_the_headline_rule_and_names_a_bad_rows_file(bcr, files):
    good = io.write_parquet(
        prompts.synthetic_prompt_set(2048, 1, 7, prompts.NeedleSpec()), files["dir"] / "p2048.parquet"
    )
    proc = tiered_run(bcr, good, "--exact-rows", str(files["not_parquet"]))
    assert_clear(proc, "--exact-rows needs --time-headline")
    claims = str(REPO / "config" / "claims.yaml")
    proc = tiered_run(bcr, good, "--time-headline", claims, "--exact-rows", str(files["not_parquet"]))
    assert_clear(proc, str(files["not_parquet"]), "not a readable Parquet file")


def test_a_model_card_at_a_context_the_config_has_not_is_refused(bcr, files):
    out = files["dir"]
    proc = bcr(
        "model", "card", "--config", str(CONFIG), "--out", str(out / "card.json"),
        "--accuracy", str(out / "acc.parquet"), "--contexts", "3000",
    )  # fmt: skip
    assert_clear(proc, "--contexts [3000]", "not in prompts.contexts")


def test_a_corrupt_checkpoint_is_named(bcr, files, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(REPO / "models" / "tiny-needle", model)
    (model / "training.json").unlink()  # no recorded hash: the loader itself must refuse the file
    (model / "model.safetensors").write_bytes(b"not safetensors at all")
    config = yaml.safe_load(CONFIG.read_text())
    config["model"]["path"] = str(model)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))
    good = io.write_parquet(
        prompts.synthetic_prompt_set(256, 1, 7, prompts.NeedleSpec()), tmp_path / "p.parquet"
    )
    proc = bcr(
        "dense", "run", "--config", str(cfg), "--prompts", str(good), "--out", str(tmp_path / "o.parquet")
    )
    assert_clear(proc, str(model), "not a loadable checkpoint")
    assert not (tmp_path / "o.parquet").exists()


def test_the_ledger_names_a_result_file_that_is_not_parquet(bcr, tmp_path):
    (tmp_path / "dense" / "needle").mkdir(parents=True)
    (tmp_path / "dense" / "needle" / "2048.parquet").write_text("not parquet")
    proc = bcr(
        "site",
        "ledger",
        "--config",
        str(CONFIG),
        "--results",
        str(tmp_path),
        "--out",
        str(tmp_path / "l.parquet"),
    )
    assert_clear(proc, "2048.parquet", "not a readable Parquet file")
    assert pd.__version__  # the main environment's pandas reads every result file
