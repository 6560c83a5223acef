"""The committed locks (requirements/lock/): complete, hash-pinned, in step with pyproject.toml, the
main environment exactly what they list, and a peer environment built from them in a temporary folder
that imports kvpress with nothing of the main environment on its path but the shared torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "requirements" / "lock"
ENVLOCK = REPO / "scripts" / "envlock.py"
sys.path.insert(0, str(REPO / "scripts"))
import envlock  # noqa: E402

MAIN_SITE = Path(sysconfig.get_paths()["purelib"])


def lock_blocks(path: Path) -> list[list[str]]:
    """The lock's entries: each the `name==version` line and its continuation lines."""
    blocks: list[list[str]] = []
    for line in path.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            blocks.append([line])
        elif blocks and line.startswith("    --hash="):
            blocks[-1].append(line)
    return blocks


@pytest.mark.parametrize("name", ["main", "sglang", "peers"])
def test_every_entry_is_an_exact_pin_with_hashes(name):
    blocks = lock_blocks(LOCKS / f"{name}.txt")
    assert blocks, name
    for block in blocks:
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+", block[0]), block[0]
        assert len(block) > 1, f"{block[0]}: no hash"


def test_the_main_lock_holds_every_pin_of_pyproject_and_the_sglang_cpu_set():
    """A pin changed in pyproject.toml or requirements/*.in without `make lock` fails here."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    wanted += [
        line.split("#")[0].strip()
        for line in (REPO / "requirements" / "sglang-cpu.in").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    pins = envlock.pins(LOCKS / "main.txt")
    for req in wanted:
        name, _, version = req.partition("==")
        name = envlock.canonical(name)
        assert name in pins, f"{name} is not in requirements/lock/main.txt: run `make lock`"
        if version:
            assert pins[name] == version, f"{name}: pyproject {version}, lock {pins[name]}: run `make lock`"
    assert envlock.pins(LOCKS / "sglang.txt") == {"sglang": "0.5.23"}
    peers_in = (REPO / "requirements" / "peers.in").read_text()
    peer_pins = envlock.pins(LOCKS / "peers.txt")
    for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", peers_in, re.M):
        assert peer_pins[envlock.canonical(name)] == version, name


def test_the_peer_takes_the_main_torch_family_at_the_same_pins():
    main, peers = envlock.pins(LOCKS / "main.txt"), envlock.pins(LOCKS / "peers.txt")
    shared = {n: v for n, v in peers.items() if envlock.SHARED.match(n)}
    assert "torch" in shared
    assert {n: main.get(n) for n in shared} == shared


def test_the_main_environment_is_exactly_its_locks():
    """What `make` installed: every locked package at its version, nothing else but this package."""
    proc = subprocess.run(
        [sys.executable, str(ENVLOCK), "check", str(LOCKS / "main.txt"), str(LOCKS / "sglang.txt"),
         "--also", "bcr-memory"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_names_what_differs(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("pytest==0.0.1 \\\n    --hash=sha256:00\nno-such-package==1.0 ; python_version >= '3'\n")
    proc = subprocess.run([sys.executable, str(ENVLOCK), "check", str(lock)], capture_output=True, text=True)
    assert proc.returncode == 1
    out = proc.stdout
    assert "missing: no-such-package" in out and "pytest" in out and "(lock: 0.0.1)" in out
    assert "not in the lock:" in out and "torch" in out


@pytest.fixture(scope="module")
def peer_env(tmp_path_factory) -> Path:
    """The peer environment built by scripts/setup_peers.sh from the locks, in a temporary folder,
    with the main environment (this interpreter's) beside it."""
    venv = tmp_path_factory.mktemp("peers") / "venv"
    env = dict(os.environ, BCR_PEERS_VENV=str(venv), BCR_VENV=str(Path(sys.prefix)))
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup_peers.sh")], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    failed = venv / ".bcr-peers-failed"
    assert proc.returncode == 0 and not failed.exists(), (
        proc.stdout + proc.stderr + (failed.read_text() if failed.exists() else "")
    )
    assert "packages from requirements/lock/peers.txt" in proc.stdout
    return venv


def test_a_peer_environment_built_from_the_locks_imports_kvpress_apart_from_the_main_one(peer_env):
    code = """
import json, sys, importlib.util, importlib.metadata as md
import kvpress, torch, transformers, huggingface_hub, tokenizers, pandas
print(json.dumps({
    "path": sys.path,
    "files": {m.__name__: m.__file__ for m in (kvpress, torch, transformers, huggingface_hub, tokenizers, pandas)},
    "versions": {n: md.version(n) for n in ("transformers", "tokenizers", "huggingface-hub", "torch", "pandas")},
    "kernels": importlib.util.find_spec("kernels") is not None,
}))
"""
    proc = subprocess.run(
        [str(peer_env / "bin" / "python"), "-W", "ignore", "-c", code], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [p for p in seen["path"] if p.startswith(str(MAIN_SITE))], "main site-packages on the path"
    for name, file in seen["files"].items():
        assert file.startswith(str(peer_env)), f"{name} from {file}"
    # torch is the main environment's build, through the link; everything else the peer lock's own
    assert Path(seen["files"]["torch"]).resolve().is_relative_to(MAIN_SITE.resolve())
    pins = envlock.pins(LOCKS / "peers.txt")
    for name, version in seen["versions"].items():
        assert version == pins[envlock.canonical(name)], name
    assert seen["kernels"] == ("kernels" in pins)
    proc = subprocess.run(
        [str(peer_env / "bin" / "python"), str(ENVLOCK), "check", str(LOCKS / "peers.txt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout


def test_a_second_setup_is_a_no_op_and_a_changed_main_torch_is_refused(peer_env, tmp_path):
    env = dict(os.environ, BCR_PEERS_VENV=str(peer_env), BCR_VENV=str(Path(sys.prefix)))
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup_peers.sh")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "(unchanged)" in proc.stdout, proc.stdout + proc.stderr
    lock = tmp_path / "peers.txt"
    lock.write_text(re.sub(r"^torch==\S+", "torch==0.0.1", (LOCKS / "peers.txt").read_text(), flags=re.M))
    target = tmp_path / "site"
    target.mkdir()
    proc = subprocess.run(
        [sys.executable, str(ENVLOCK), "share", "--lock", str(lock), "--from", str(MAIN_SITE),
         "--to", str(target)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and "the peer lock pins 0.0.1" in proc.stdout
    assert not list(target.iterdir())
