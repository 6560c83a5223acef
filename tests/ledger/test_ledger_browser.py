"""The built site in a real headless Chromium, as a reader gets it, at 1280 px and at 390 px.

Chromium and its WebDriver are Debian's ``chromium`` and ``chromium-driver`` packages, installed by
scripts/setup_browser.sh (``make test`` runs it first).  Without them these tests fail and say so: a
browser check that silently skips would prove nothing.  The site is served over
``http://127.0.0.1`` and driven through chromedriver (tests/ledger/webdriver.py).

Which site:

* by default, the synthetic full site of the test suite (every track's evidence, conftest.py
  ``full_site``); screenshots go to ``test-artifacts/browser/`` in the repository (gitignored);
* ``BCR_SITE_RESULTS=results`` (or any results folder holding ``site/`` and ``ledger.parquet``):
  a real pipeline run's site, e.g. ``BCR_SITE_RESULTS=results .venv/bin/pytest
  tests/ledger/test_ledger_browser.py``; screenshots go to ``<results>/browser/``.

``BCR_BROWSER_ARTIFACTS`` overrides the screenshot folder.  Every page gets ``<page>_1280.png``
and ``<page>_390.png`` (the whole page height).

What a page must satisfy: at 1280 px every key table (``.key-table``: the ledger, the sweep and
promotion tables, ours beside the note, cache operations, provenance) fits without horizontal
scrolling, so its comparison columns are on screen; at 390 px the page itself never scrolls
sideways (wide tables scroll inside their own wrapper); no generated page shows ``nan`` or
``None``; every image (the plots) loads; the console logs no error (a 404 included).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from ledger_synth import REPO
from webdriver import Browser, BrowserMissing, executables, serve

from bcr.contracts import QUERY_MODES
from bcr.ledger.claims import evaluate
from bcr.ledger.evidence import load_results
from bcr.ledger.render import PAGES

WIDE, NARROW = 1280, 390
GENERATED = [p.removesuffix(".md") for p in PAGES]
HAND_WRITTEN = ["methods", "design", "publishing"]
ALL_PAGES = GENERATED + HAND_WRITTEN
# Key tables each page must show when its evidence is present (id of the .key-table wrapper).
KEY_TABLES = {
    "index": ["glance-wrap", "ledger-wrap"],
    "frontier": ["frontier-smallest"],
    "tiered": [  # one set per query mode
        f"{table}-needle-{mode}"  # the family the synthetic results hold
        for mode in QUERY_MODES
        for table in (
            "sweep-table",
            "promotion-exactness",
            "promotion-latency",
            "promotion-memory",
            "negative-controls",
        )
    ],
    "serving": ["cache-ops-16", "cache-ops-1"],
    "provenance": ["provenance-files"],
}
TAB_LABELS = "document.querySelectorAll('article .tabbed-labels > label')"
MISSING_TEXT = re.compile(r"(?<![\w.`])(nan|NaN|None)(?![\w`])")

TABLES_JS = """
return Array.from(document.querySelectorAll('article .key-table')).map(k => {
  const t = k.querySelector('table');
  if (!t) return {id: k.id, columns: 0, cut: false};
  // Material makes the table itself the scroll box (inline-block, overflow auto) inside a scroll
  // wrapper: the columns are all on screen when neither scrolls and the table ends in the viewport.
  const boxes = [t, t.closest('.md-typeset__scrollwrap, .table-scroll')].filter(Boolean);
  const hidden = boxes.map(b => b.scrollWidth - b.clientWidth);
  const right = t.getBoundingClientRect().right, viewport = document.documentElement.clientWidth;
  return {id: k.id, columns: t.querySelectorAll('th').length, hidden_px: Math.max(...hidden),
          right: right, viewport: viewport, cut: Math.max(...hidden) > 1 || right > viewport + 1};
});
"""
IMAGES_JS = """
return Array.from(document.images).map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
"""


def _url(page: str) -> str:
    return "" if page == "index" else f"{page}/"


@pytest.fixture(scope="module")
def site_results(request) -> Path:
    """The results folder whose ``site/`` is under test (a real run's, or the synthetic full site)."""
    env = os.environ.get("BCR_SITE_RESULTS")
    if env:
        root = Path(env).resolve()
        if not (root / "site" / "index.html").is_file():
            pytest.fail(f"BCR_SITE_RESULTS={env}: no built site at {root / 'site' / 'index.html'}")
        return root
    return request.getfixturevalue("full_site")


@pytest.fixture(scope="module")
def artifacts(site_results) -> Path:
    env = os.environ.get("BCR_BROWSER_ARTIFACTS")
    if env:
        out = Path(env)
    elif os.environ.get("BCR_SITE_RESULTS"):
        out = site_results / "browser"
    else:
        out = REPO / "test-artifacts" / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser(site_results, tmp_path_factory) -> Iterator[tuple[Browser, str]]:
    try:
        executables()
    except BrowserMissing as exc:
        pytest.fail(str(exc))
    with serve(site_results / "site") as base, Browser(tmp_path_factory.mktemp("chromium")) as b:
        yield b, base


def _open(b: Browser, base: str, page: str, width: int) -> None:
    b.set_viewport(width, 900)
    b.console()  # drop entries of earlier pages
    b.get(base + _url(page))
    deadline = time.monotonic() + 10
    while b.run("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # Material's scripts wrap tables and wire the header after load


def _errors(b: Browser) -> list[str]:
    return [e["message"] for e in b.console() if e.get("level") == "SEVERE"]


@pytest.mark.parametrize("page", ALL_PAGES)
def test_page_at_1280(browser, artifacts, page):
    b, base = browser
    _open(b, base, page, WIDE)
    assert b.viewport_width() == WIDE
    b.screenshot(artifacts / f"{page}_{WIDE}.png")
    errors = _errors(b)
    assert not errors, f"{page}: console errors {errors}"
    broken = [i["src"] for i in b.run(IMAGES_JS) if not i["ok"]]
    assert not broken, f"{page}: images that did not load: {broken}"
    tables = b.run(TABLES_JS)
    for i in range(b.run(f"return {TAB_LABELS}.length")):  # the tables of every tab, each shown in turn
        b.run(f"{TAB_LABELS}[{i}].click()")
        tables += b.run(TABLES_JS)
    cut = [t for t in tables if t["cut"]]
    assert not cut, (
        f"{page}: key tables cut off at {WIDE} px (their right-hand columns need scrolling): {cut}"
    )
    if page in GENERATED:  # every folded block open and every tab shown in turn: all the text
        b.run("document.querySelectorAll('article details').forEach(d => d.open = true)")
        text = b.run("return document.querySelector('article').innerText")
        for i in range(b.run(f"return {TAB_LABELS}.length")):
            b.run(f"{TAB_LABELS}[{i}].click()")
            text += b.run("return document.querySelector('article').innerText")
        hits = sorted({m.group(0) for m in MISSING_TEXT.finditer(text)})
        assert not hits, f"{page}: shows {hits} (a missing value must read as —)"


def test_the_glance_table_is_the_first_screen(browser, artifacts):
    """Results at a glance: the whole table inside the first 1280 x 900 screen of the overview."""
    b, base = browser
    _open(b, base, "index", WIDE)
    top, bottom, rows = b.run(
        "const t = document.querySelector('#glance-table'); const r = t.getBoundingClientRect();"
        " return [r.top, r.bottom, t.querySelectorAll('tbody tr').length]"
    )
    assert rows >= 8, rows
    assert top >= 0 and bottom <= 900, f"the glance table spans {top:.0f}-{bottom:.0f} px of a 900 px screen"


def test_page_heights_are_recorded_and_every_results_page_is_short(browser, artifacts):
    """Every page's height at 1280 px into page_heights.json beside the screenshots (the closing
    note's before/after); every generated results page stays under 8,000 px (the long parts fold,
    the tiered sections are tabs)."""
    import json

    b, base = browser
    heights = {}
    for page in ALL_PAGES:
        _open(b, base, page, WIDE)
        heights[page] = b.run("return document.documentElement.scrollHeight")
    (artifacts / "page_heights.json").write_text(json.dumps(heights, indent=2) + "\n")
    over = {p: h for p, h in heights.items() if p in GENERATED and h > 8000}
    assert not over, f"results pages over 8,000 px at {WIDE} px: {over}"


def test_tiered_page_has_one_tab_per_family_and_mode_showing_its_tables(browser, site_results):
    """The tiered page's sections are tabs (one screen per family and mode, not one long page):
    selecting a tab shows that section's key tables, on screen and whole, and hides the others'."""
    b, base = browser
    if not load_results(site_results)["tiered_promotion"].present:
        pytest.skip("no tiered promotion results in the site under test")
    _open(b, base, "tiered", WIDE)
    labels = b.run(f"return Array.from({TAB_LABELS}).map(l => l.textContent.trim())")
    assert len(labels) >= 2, labels
    seen: list[str] = []
    for i, label in enumerate(labels):
        b.run(f"{TAB_LABELS}[{i}].click()")
        shown = [t for t in b.run(TABLES_JS) if t["columns"] and t["right"] > 0]
        own = sorted(t["id"] for t in shown if t["id"].startswith("sweep-table-"))
        assert len(own) <= 1, (label, own)  # this tab's sweep table (where it has one), no other tab's
        assert not [t for t in shown if t["cut"]], (label, shown)
        seen += own
    expected = {t["id"] for t in b.run(TABLES_JS) if t["id"].startswith("sweep-table-")}
    assert set(KEY_TABLES["tiered"]) & expected  # the synthetic family's tables at least
    assert sorted(seen) == sorted(expected), seen  # each sweep table in exactly one tab


@pytest.mark.parametrize("page", ALL_PAGES)
def test_page_at_390_has_no_sideways_scroll(browser, artifacts, page):
    b, base = browser
    _open(b, base, page, NARROW)
    assert b.viewport_width() == NARROW
    scroll, client = b.run(
        "return [Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),"
        " document.documentElement.clientWidth]"
    )
    b.screenshot(artifacts / f"{page}_{NARROW}.png")
    assert scroll <= client + 1, f"{page}: the page scrolls sideways at {NARROW} px ({scroll} > {client})"
    assert not _errors(b), page


def test_key_tables_are_on_their_pages(browser, site_results):
    """The tables the layout test measures are there (where their evidence is), so it cannot pass vacuously."""
    b, base = browser
    results = load_results(site_results)
    present = {
        "index": True,
        "tiered": results["tiered_sweep"].present and results["tiered_promotion"].present,
        "serving": results["cache_ops"].present,
        "frontier": results["tiered_frontier"].present,
        "provenance": True,
    }
    for page, ids in KEY_TABLES.items():
        if not present[page]:
            continue
        _open(b, base, page, WIDE)
        shown = {t["id"] for t in b.run(TABLES_JS) if t["columns"]}
        assert set(ids) <= shown, (page, sorted(shown))


def test_overview_ledger_shows_the_computed_verdicts(browser, site_results, spec, cpu_config):
    b, base = browser
    _open(b, base, "index", WIDE)
    rows = b.run(
        "return Array.from(document.querySelectorAll('#ledger-table tr[data-claim]')).map(r =>"
        " [r.dataset.claim, Array.from(r.querySelectorAll('td.verdict-cell .verdict')).map(s => s.textContent.trim())])"
    )
    if os.environ.get("BCR_SITE_RESULTS"):
        expected = pd.read_parquet(site_results / "ledger.parquet")
    else:
        expected = evaluate(spec, load_results(site_results), cpu_config)
    assert [r[0] for r in rows] == list(expected["claim_id"])
    verdict = dict(zip(expected["claim_id"], expected["verdict"], strict=True))
    for claim, shown in rows:
        assert shown == [verdict[claim]], claim
    assert b.run("return !!document.querySelector('.md-header')")  # the Material theme's page


def test_a_link_to_a_claim_card_opens_the_folded_block_it_is_in(browser):
    """A track page's claim table links to each card, folded with the others: following the link
    (as a reader does, a hash change on the page) opens the blocks around the card and shows it."""
    b, base = browser
    _open(b, base, "tiered", WIDE)
    href = b.run("return document.querySelector('#page-claims a[href^=\"#claim-\"]').getAttribute('href')")
    target = href[1:]
    assert b.run(f"return document.getElementById('{target}').closest('details').open") is False
    b.run(f"window.location.hash = '{href}'")
    time.sleep(0.2)
    opened, top = b.run(
        f"const t = document.getElementById('{target}');"
        " return [t.closest('details').open, t.getBoundingClientRect().top]"
    )
    assert opened is True and 0 <= top < 900, (opened, top)


def test_palette_toggle_switches_to_dark(browser):
    b, base = browser
    _open(b, base, "index", WIDE)
    before = b.run("return document.body.getAttribute('data-md-color-scheme')")
    b.run("document.querySelector('form[data-md-component=\"palette\"] label:not([hidden])').click()")
    time.sleep(0.2)
    after = b.run("return document.body.getAttribute('data-md-color-scheme')")
    assert {before, after} == {"default", "slate"}, (before, after)
    b.run("document.querySelector('form[data-md-component=\"palette\"] label:not([hidden])').click()")


def test_search_ranks_prose_above_the_provenance_dump(browser):
    """Material's search worker answers, and a results word finds a results page before the config dump."""
    b, base = browser
    _open(b, base, "index", WIDE)
    b.run(
        "const i = document.querySelector('input[data-md-component=\"search-query\"]');"
        "i.focus(); i.value = 'compression'; i.dispatchEvent(new Event('input', {bubbles: true}));"
        "i.dispatchEvent(new KeyboardEvent('keyup', {bubbles: true}));"
    )
    links: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        links = b.run(
            "return Array.from(document.querySelectorAll('.md-search-result__list > li a')).map(a => a.getAttribute('href'))"
        )
        if links:
            break
        time.sleep(0.25)
    assert links, "the site search returned nothing for 'compression'"
    assert "provenance" not in links[0], links[:5]
