"""Assemble the MkDocs sources under ``results/`` and build the site strictly.

Hand-written pages come from the repository's ``site/``; generated pages and plots are rendered
into ``results/site_src/`` beside them, so a run never writes into the source tree.
``results/mkdocs.yml`` is the repository's ``mkdocs.yml`` with its directories pointed there; the
same file is what ``mike deploy --config-file results/mkdocs.yml`` publishes (outside the DAG), with
Material's version selector fed by mike's ``versions.json``.  The pipeline's own build (a plain
``mkdocs build``, no mike) reads ``results/mkdocs.local.yml``: the same config without the version
provider, so a plain build does not ask for a ``versions.json`` that only a mike deployment has.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from bcr import io
from bcr.ledger.claims import ClaimFile, ledger_rows
from bcr.ledger.evidence import Results
from bcr.ledger.render import render_pages, site_data

DESIGN_DOC = "DESIGN.md"
DESIGN_NAV = "design.md"  # the nav entry of mkdocs.yml that the design pages replace


class SiteBuildError(RuntimeError):
    """mkdocs refused the sources (strict mode: a broken link, a missing page, a warning)."""


def check_ledger(ledger: pd.DataFrame, spec: ClaimFile, config: dict) -> None:
    """The ledger must hold exactly the claims of the claim file (a per-mode claim once per query
    mode), in its order (no stale ledger)."""
    want = [c.row_id(w, m) for c, w, m in ledger_rows(spec, config)]
    have = list(ledger["claim_id"])
    if have != want:
        raise SiteBuildError(
            f"the ledger's claims {have} differ from the claim file's {want}: re-run `bcr site ledger`"
        )


def assemble_sources(
    repo: Path, results: Results, config: dict, ledger: pd.DataFrame, spec: ClaimFile, reference: dict
) -> Path:
    """Copy ``site/``, render pages and plots into ``results/site_src``; write ``results/mkdocs.yml``."""
    check_ledger(ledger, spec, config)
    out = results.root
    src = out / "site_src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(repo / "site", src)
    # The project's design document lives at the repository root (where the code cites it by
    # section name) and is a section of the site, a page per `## ` section, so the strict build fails
    # if it goes missing and no page of it is 15,000 px long.
    design = design_pages((repo / DESIGN_DOC).read_text())
    for name, text in design.items():
        io.write_text(text, src / name)
    data = site_data(results, config, ledger, spec, reference, src, repo=repo)
    for name, text in render_pages(data).items():
        io.write_text(text, src / name)
    mk = yaml.safe_load((repo / "mkdocs.yml").read_text())
    mk["nav"] = _with_design_nav(mk["nav"], design)
    mk["docs_dir"] = "site_src"
    mk["site_dir"] = "site"
    mk["site_name"] = config.get("site", {}).get("title", mk.get("site_name", "bcr-memory"))
    io.write_text(yaml.safe_dump(mk, sort_keys=False, allow_unicode=True), out / "mkdocs.yml")
    io.write_text(yaml.safe_dump(local_config(mk), sort_keys=False, allow_unicode=True), out / LOCAL_MKDOCS)
    return out / "mkdocs.yml"


def design_pages(text: str) -> dict[str, str]:
    """``DESIGN.md`` cut at its ``## `` headings (outside code fences): ``design/index.md`` holds the
    title, the lead and a list of the sections; each section becomes ``design/{slug}.md`` with its
    headings one level up (``## X`` is the page's ``# X``).  Insertion-ordered, as the nav lists them."""
    lead: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and line.startswith("## "):
            sections.append((line[3:].strip(), []))
            continue
        if sections:
            body = sections[-1][1]
            body.append(line[1:] if not fence and line.startswith("###") else line)
        else:
            lead.append(line)
    pages = {}
    links = []
    for title, body in sections:
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        name = f"design/{slug}.md"
        pages[name] = f"# {title}\n" + "\n".join(body).rstrip() + "\n"
        links.append(f"- [{title}]({slug}.md)")
    index = "\n".join(lead).rstrip() + "\n\n## Sections\n\n" + "\n".join(links) + "\n"
    return {"design/index.md": index, **pages}


def _with_design_nav(nav: list, design: dict[str, str]) -> list:
    """The nav with its ``design.md`` entry replaced by the design section: its index, then a page
    per section titled by its heading."""
    entries = [{"Overview": "design/index.md"}]
    for name, text in design.items():
        if name != "design/index.md":
            entries.append({text.splitlines()[0].removeprefix("# "): name})
    out = []
    for item in nav:
        if isinstance(item, dict):
            ((title, value),) = item.items()
            if value == DESIGN_NAV:
                out.append({title: entries})
                continue
            if isinstance(value, list):
                out.append({title: _with_design_nav(value, design)})
                continue
        out.append(item)
    return out


LOCAL_MKDOCS = "mkdocs.local.yml"


def local_config(mk: dict) -> dict:
    """The config of a plain (non-mike) build: no ``extra.version``, so no ``versions.json`` request."""
    local = dict(mk)
    extra = {k: v for k, v in (mk.get("extra") or {}).items() if k != "version"}
    if extra:
        local["extra"] = extra
    else:
        local.pop("extra", None)
    return local


def mkdocs_build(mkdocs_yml: Path) -> str:
    """``mkdocs build --strict --clean``; any warning fails the build (and this function)."""
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(mkdocs_yml)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SiteBuildError(f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def build(
    repo: Path, results: Results, config: dict, ledger: pd.DataFrame, spec: ClaimFile, reference: dict
) -> Path:
    mkdocs_yml = assemble_sources(repo, results, config, ledger, spec, reference)
    mkdocs_build(mkdocs_yml.parent / LOCAL_MKDOCS)
    return results.root / "site" / "index.html"
