"""The commands the site rules call, end to end, and the documented mike deploy of their output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ledger_synth as synth
import pandas as pd
import pytest

from bcr.cli import main
from bcr.ledger.claims import LEDGER_COLUMNS
from bcr.provenance import PROVENANCE_COLUMNS

REPO = synth.REPO
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bcr test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "bcr test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def test_ledger_build_version_and_mike_deploy(tmp_path, capsys):
    work = tmp_path / "repo"
    work.mkdir()
    results = synth.write_default(work / "results")
    cfg = str(REPO / "config" / "config.yaml")
    claims = str(REPO / "config" / "claims.yaml")
    ledger_path = results / "ledger.parquet"

    assert main(["site", "ledger", "--config", cfg, "--claims", claims, "--results", str(results),
                 "--out", str(ledger_path)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "tiered_exact" in printed and "supported" in printed
    ledger = pd.read_parquet(ledger_path)
    assert list(ledger.columns[: len(LEDGER_COLUMNS)]) == LEDGER_COLUMNS
    assert set(PROVENANCE_COLUMNS) <= set(ledger.columns)
    assert ledger["claim_id"].is_unique

    assert main(["site", "build", "--config", cfg, "--repo", str(REPO), "--results", str(results),
                 "--ledger", str(ledger_path), "--claims", claims,
                 "--reference", str(REPO / "config" / "reference.yaml")]) == 0  # fmt: skip
    assert (results / "site" / "index.html").is_file()
    assert not (REPO / "results" / "site_src" / "__never__").exists()  # nothing written into the repo's tree

    capsys.readouterr()
    assert main(["site", "version", "--config", cfg, "--ledger", str(ledger_path)]) == 0
    version = capsys.readouterr().out.strip()
    commit = str(ledger["git_commit"].iloc[0])
    assert version.startswith("cpu-tiny-") and commit.split("+")[0][:8] in version

    # The deploy step of site/publishing.md, into a scratch git repository (never this one).
    if shutil.which("git") is None:
        pytest.fail("git is needed for mike")
    _git(work, "init", "-q", ".")
    _git(work, "commit", "-q", "--allow-empty", "-m", "init")
    mike = [str(Path(sys.executable).with_name("mike"))]  # the console script installed beside this python
    # mike runs `mkdocs` from PATH: put this interpreter's scripts first, whatever the caller's PATH is.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, **GIT_ENV, "PATH": path}
    mk = "results/mkdocs.yml"
    deploy = subprocess.run([*mike, "deploy", "--config-file", mk, "--update-aliases", version, "latest"],
                            cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
    assert deploy.returncode == 0, f"mike deploy failed:\n{deploy.stdout}\n{deploy.stderr}"
    subprocess.run([*mike, "set-default", "--config-file", mk, "latest"], cwd=work, env=env, check=True,
                   capture_output=True)  # fmt: skip
    versions = json.loads(_git(work, "show", "gh-pages:versions.json"))
    assert versions == [{"version": version, "title": version, "aliases": ["latest"]}]
    tree = _git(work, "ls-tree", "-r", "--name-only", "gh-pages").split()
    assert f"{version}/index.html" in tree
    assert f"{version}/tiered/index.html" in tree


def test_invalid_claim_file_names_the_claim(tmp_path, capsys):
    bad = tmp_path / "claims.yaml"
    text = (REPO / "config" / "claims.yaml").read_text().replace("kind: quantile_ratio", "kind: vibes", 1)
    bad.write_text(text)
    code = main(["site", "ledger", "--config", str(REPO / "config" / "config.yaml"), "--claims", str(bad),
                 "--results", str(tmp_path / "results"), "--out", str(tmp_path / "l.parquet")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "claims.0.rule.kind" in err
    assert not (tmp_path / "l.parquet").exists()
