"""The site builds with `mkdocs build --strict` from any subset of results, and strictness is real."""

from __future__ import annotations

import json
import re
import shutil

import ledger_synth as synth
import pytest
import yaml
from ledger_synth import REPO, build_site

from bcr.contracts import QUERY_MODES
from bcr.ledger.claims import evaluate, ledger_rows
from bcr.ledger.evidence import load_results
from bcr.ledger.render import PAGES
from bcr.ledger.site import SiteBuildError, assemble_sources
from bcr.ledger.version import site_version


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        for value in item.values():
            out.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return out


def test_full_site_builds_every_page_and_plot(full_site):
    site = full_site / "site"
    for page in PAGES:
        html = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert html.is_file(), page
    for plot in (
        *(f"compression_vs_exactness_needle_{m}" for m in QUERY_MODES),
        *(f"latency_ratios_needle_{m}" for m in QUERY_MODES),
        "cache_ops",
        "ttft_distributions",
        "decomposition",
    ):
        assert (site / "plots" / f"{plot}.svg").is_file(), plot
    assert (full_site / "mkdocs.yml").is_file()
    tiered = (site / "tiered" / "index.html").read_text()
    assert all(f"compression_vs_exactness_needle_{m}.svg" in tiered for m in QUERY_MODES)


@pytest.mark.parametrize("subset", ["default", "empty"])
def test_strict_build_passes_on_a_subset_of_results(tmp_path, spec, cpu_config, reference, subset):
    root = tmp_path / "results"
    root.mkdir()
    if subset == "default":
        synth.write_default(root)
    index = build_site(root, spec, cpu_config, reference)
    text = index.read_text()
    assert 'id="ledger-table"' in text
    assert text.count("data-claim=") == len(ledger_rows(spec, cpu_config))


def test_strict_build_fails_on_a_broken_link(tmp_path, spec, cpu_config, reference):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "site", repo / "site")
    shutil.copy(REPO / "mkdocs.yml", repo / "mkdocs.yml")
    shutil.copy(REPO / "DESIGN.md", repo / "DESIGN.md")
    methods = repo / "site" / "methods.md"
    methods.write_text(methods.read_text() + "\nSee [a page that does not exist](nowhere.md).\n")
    root = tmp_path / "results"
    root.mkdir()
    with pytest.raises(SiteBuildError, match=r"nowhere\.md"):
        build_site(root, spec, cpu_config, reference, repo=repo)


def test_a_stale_ledger_is_refused(tmp_path, spec, cpu_config, reference):
    root = synth.write_default(tmp_path / "results")
    results = load_results(root)
    ledger = evaluate(spec, results, cpu_config).iloc[1:]
    with pytest.raises(SiteBuildError, match="re-run `bcr site ledger`"):
        assemble_sources(REPO, results, cpu_config, ledger, spec, reference)


def test_nav_lists_every_rendered_and_hand_written_page():
    mk = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    hand = {p.name for p in (REPO / "site").glob("*.md")} | {"design.md"}  # design.md: the root DESIGN.md
    assert sorted(_nav_pages(mk["nav"])) == sorted(set(PAGES) | hand)
    assert not set(PAGES) & hand  # a hand-written page would be overwritten by a rendered one
    assert mk["extra"]["version"]["provider"] == "mike"
    assert mk["strict"] is True
    schemes = [p["scheme"] for p in mk["theme"]["palette"]]
    assert schemes == ["default", "slate"] and all("toggle" in p for p in mk["theme"]["palette"])


def test_a_plain_build_asks_for_no_versions_json_and_mike_gets_the_selector(full_site):
    """results/mkdocs.yml (what mike deploys) has the version provider; the plain build's config has not."""
    mike = yaml.safe_load((full_site / "mkdocs.yml").read_text())
    local = yaml.safe_load((full_site / "mkdocs.local.yml").read_text())
    assert mike["extra"]["version"]["provider"] == "mike"
    assert "version" not in (local.get("extra") or {})
    assert {k: v for k, v in mike.items() if k != "extra"} == {k: v for k, v in local.items() if k != "extra"}
    index = (full_site / "site" / "index.html").read_text()
    config = re.search(r'id="__config" type="application/json">(.*?)</script>', index, flags=re.S)
    assert config, "Material's page config is missing"
    assert json.loads(config.group(1)).get("version") is None  # Material asks for versions.json only with it


def test_search_ranks_the_provenance_dump_low(full_site):
    src = (full_site / "site_src" / "provenance.md").read_text()
    assert "boost: 0.2" in src.split("---")[1]
    assert "data-search-exclude" in src


@pytest.mark.parametrize(
    ("commit", "expected"),
    [
        ("0123abcd4567ef890123abcd4567ef8901234567", "cpu-tiny-0123abcd"),
        ("0123abcd4567ef890123abcd4567ef8901234567+dirty", "cpu-tiny-0123abcd-dirty"),
        ("unknown", "cpu-tiny-unknown"),
    ],
)
def test_site_version(commit, expected):
    assert site_version("cpu-tiny", commit) == expected


def test_the_design_document_is_a_page_per_section_and_every_section_is_in_the_nav():
    """DESIGN.md becomes design/index.md (its lead, a link per section) and a page per `## `
    section, headings one level up; a `## ` inside a code fence stays text; the nav's design.md
    entry becomes that section, in the document's order."""
    from bcr.ledger.site import _with_design_nav, design_pages

    text = "# Design\n\nLead.\n\n## First part\n\nA.\n\n### Detail\n\n```\n## not a heading\n```\n\n## Second\n\nB.\n"
    pages = design_pages(text)
    assert list(pages) == ["design/index.md", "design/first-part.md", "design/second.md"]
    assert pages["design/first-part.md"].startswith("# First part\n")
    assert (
        "\n## Detail\n" in pages["design/first-part.md"]
        and "## not a heading" in pages["design/first-part.md"]
    )
    assert "- [Second](second.md)" in pages["design/index.md"] and "Lead." in pages["design/index.md"]
    nav = _with_design_nav([{"Overview": "index.md"}, {"Design": "design.md"}], pages)
    assert nav[1] == {
        "Design": [
            {"Overview": "design/index.md"},
            {"First part": "design/first-part.md"},
            {"Second": "design/second.md"},
        ]
    }
    real = design_pages((REPO / "DESIGN.md").read_text())
    sections = [line for line in (REPO / "DESIGN.md").read_text().splitlines() if line.startswith("## ")]
    assert len(real) == len(sections) + 1
