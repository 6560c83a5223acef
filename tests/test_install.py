"""The install modes the README describes: the editable install `make` sets up (and the cluster's
`pip install -e '.[dev,cluster]'`), and a regular install (`pip install .`), which must carry the
schemas, templates and claim schema as package data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def test_editable_install_serves_this_checkout(tmp_path):
    where = subprocess.run(
        [sys.executable, "-c", "import bcr, bcr.config; print(bcr.__file__); print(bcr.config.SCHEMAS)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(where[0]).resolve() == REPO / "bcr" / "__init__.py"


def test_regular_install_carries_package_data_and_validates_without_the_repository(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("bcr_memory-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "bcr/schemas/config.schema.yaml",
        "bcr/schemas/tiered.schema.yaml",
        "bcr/schemas/serving.schema.yaml",
        "bcr/schemas/site.schema.yaml",
        "bcr/ledger/claims.schema.yaml",
        "bcr/ledger/templates/index.md.j2",
        "bcr/contracts.py",
    ):
        assert needed in names, needed

    target = tmp_path / "site-packages"
    subprocess.run([*PIP, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    code = (
        "import sys, bcr, bcr.config as c\n"
        f"assert bcr.__file__.startswith({str(target)!r}), bcr.__file__\n"
        f"cfg = c.load({str(REPO / 'config' / 'a100.yaml')!r})\n"
        "print(cfg['run_name'])"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r})\n{code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "a100-qwen7b"
