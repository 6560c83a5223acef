"""Assemble the MkDocs sources under ``results/`` and build the site strictly.

Hand-written pages come from the repository's ``site/``; generated pages are rendered from Jinja
templates into ``results/site_src/`` beside them, so a run never writes into the source tree.
``results/mkdocs.yml`` is the repository's ``mkdocs.yml`` with the two directories pointed there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bcr import io
from bcr.ledger.render import render_pages


def assemble_sources(repo: Path, results: Path, config: dict) -> Path:
    src = results / "site_src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(repo / "site", src)
    for name, text in render_pages(results, config).items():
        io.write_text(text, src / name)
    mk = yaml.safe_load((repo / "mkdocs.yml").read_text())
    mk["docs_dir"] = "site_src"
    mk["site_dir"] = "site"
    mk["site_name"] = config.get("site", {}).get("title", mk.get("site_name", "bcr-memory"))
    io.write_text(yaml.safe_dump(mk, sort_keys=False), results / "mkdocs.yml")
    return results / "mkdocs.yml"


def build(repo: Path, results: Path, config: dict) -> Path:
    mkdocs_yml = assemble_sources(repo, results, config)
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(mkdocs_yml)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}")
    return results / "site" / "index.html"
