"""A real headless Chromium renders the overview: the ledger shows one verdict per claim; a screenshot is kept.

Chromium is Debian's `chromium` package, installed by scripts/setup_browser.sh (the README's test
command runs it first).  Without it this test fails and says so: a browser check that silently
skips would prove nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from bcr.ledger.claims import evaluate
from bcr.ledger.evidence import load_results

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium is not installed: run `bash scripts/setup_browser.sh` (Debian package `chromium`)"
        )
    return exe


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


class LedgerParser(HTMLParser):
    """Collects, per ``tr[data-claim]`` of ``table#ledger-table``, the texts of verdict badges in its verdict cell."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.order: list[str] = []
        self._in_table = self._in_cell = self._in_badge = False
        self._claim: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "table" and a.get("id") == "ledger-table":
            self._in_table = True
        elif self._in_table and tag == "tr" and "data-claim" in a:
            self._claim = a["data-claim"]
            self.order.append(self._claim)
            self.rows[self._claim] = []
        elif self._claim and tag == "td" and "verdict-cell" in classes:
            self._in_cell = True
        elif self._in_cell and tag == "span" and "verdict" in classes:
            self._in_badge = True
            self.rows[self._claim].append("")

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_badge = False
        elif tag == "td":
            self._in_cell = False
        elif tag == "tr":
            self._claim = None
        elif tag == "table":
            self._in_table = False

    def handle_data(self, data):
        if self._in_badge:
            self.rows[self._claim][-1] += data.strip()


def test_overview_in_headless_chromium(full_site, tmp_path, spec, cpu_config):
    index = full_site / "site" / "index.html"
    dom = run_chromium(["--dump-dom", index.as_uri()], tmp_path / "profile").stdout
    assert "</html>" in dom
    assert "md-header" in dom  # the Material theme's script-built page, not a bare file

    parser = LedgerParser()
    parser.feed(dom)
    expected = evaluate(spec, load_results(full_site), cpu_config)
    assert parser.order == [c.id for c in spec.claims]
    for row in expected.itertuples():
        assert parser.rows[row.claim_id] == [row.verdict], row.claim_id
    assert {v for vs in parser.rows.values() for v in vs} == {"supported", "rejected", "not yet"}

    shot = tmp_path / "overview.png"
    run_chromium(["--window-size=1400,2400", f"--screenshot={shot}", index.as_uri()], tmp_path / "profile")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = plt.imread(shot)
    assert pixels.shape[:2] == (2400, 1400)
    assert pixels[..., :3].std() > 0.05  # a rendered page, not a blank canvas
