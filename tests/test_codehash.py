"""Rerun hashes follow the code each command reaches, and every rule hashes the command it runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bcr import codehash
from bcr.cli import commands

REPO = Path(__file__).resolve().parent.parent


def _rel(files: list[Path]) -> set[str]:
    return {str(f.relative_to(codehash.PACKAGE_ROOT)) for f in files}


def test_the_dense_command_reaches_its_modules_and_not_the_other_tracks():
    files = _rel(codehash.command_files("dense", "run"))
    assert {"commands.py", "dense.py", "measure.py", "generation.py", "models.py", "runtime.py"} <= files
    assert not any(f.startswith(("tiered/", "prefix/", "ledger/", "serving/")) for f in files)
    # cmd_model_train's lazy `from bcr import training` is not the dense handler's
    assert "training.py" not in files


def test_lazy_imports_are_followed():
    """cmd_run imports the harness (and the headline rule) inside the function: both are in its
    hash; building prompts no longer imports training (nor torch), so it is not in its."""
    files = _rel(codehash.command_files("tiered", "run"))
    assert {"tiered/cli.py", "tiered/harness.py", "headline.py"} <= files
    prompts = _rel(codehash.command_files("prompts", "build"))
    assert {"prompts.py", "commands.py"} <= prompts and "training.py" not in prompts


def test_tracks_reach_their_own_package_and_data_files():
    tiered = _rel(codehash.command_files("tiered", "run"))
    assert {
        "tiered/harness.py",
        "tiered/cache.py",
        "tiered/paths.py",
        "measure.py",
        "generation.py",
    } <= tiered
    assert not any(f.startswith(("prefix/", "ledger/")) for f in tiered)
    bench = _rel(codehash.command_files("prefix", "bench"))
    assert {"prefix/sim.py", "prefix/cache.py", "prefix/chain.py", "serving/workloads.py"} <= bench
    assert not any(f.startswith(("tiered/", "ledger/")) for f in bench)
    site = _rel(codehash.command_files("site", "build"))
    assert "ledger/templates/index.md.j2" in site and "ledger/claims.schema.yaml" in site
    assert not any(f.startswith("schemas/") for f in site)  # validation only


def test_the_hash_changes_with_any_reached_file(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    monkey_root = codehash.PACKAGE_ROOT
    try:
        codehash.PACKAGE_ROOT = tmp_path
        before = codehash.files_hash([a, b])
        b.write_text("y = 3\n")
        assert codehash.files_hash([a, b]) != before
        assert codehash.files_hash([b, a]) == codehash.files_hash([a, b])
    finally:
        codehash.PACKAGE_ROOT = monkey_root


def test_unknown_command_is_a_clear_error():
    with pytest.raises(KeyError, match="no command `bcr dense nope`"):
        codehash.command_hash("dense", "nope")


def _rule_blocks() -> list[tuple[str, str]]:
    blocks = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(
            r"^\s*(?:rule|checkpoint) (\w+):\n(.*?)(?=^\s*(?:rule|checkpoint) \w+:|\Z)", text, re.S | re.M
        ):
            blocks.append((m.group(1), m.group(2)))
    return blocks


def test_every_rule_hashes_the_command_its_shell_runs():
    known = commands()
    blocks = _rule_blocks()
    assert len(blocks) >= 10
    for name, body in blocks:
        shell = re.search(r'"bcr (\w+) ([\w-]+) ', body)
        assert shell, f"rule {name} does not call the bcr CLI"
        hashed = re.search(r'code=command_hash\("(\w+)", "([\w-]+)"\)', body)
        assert hashed, f"rule {name} has no command_hash"
        assert hashed.groups() == shell.groups(), name
        assert hashed.groups() in known, name
