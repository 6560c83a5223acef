"""The claim file, the reference file and the site config section: complete, consistent, validated."""

from __future__ import annotations

import copy
import re

import ledger_synth as synth
import pytest
import yaml

from bcr import config as cfgmod
from bcr.ledger.claims import load_claims
from bcr.ledger.rules import RULES

CLAIMS = synth.REPO / "config" / "claims.yaml"
NOTE_LEDGER = ["rejected", "supported", "supported", "supported", "rejected", "rejected", "not yet"]


def test_the_notes_seven_claims_with_its_verdicts(spec):
    noted = [c for c in spec.claims if c.note_verdict is not None]
    assert [c.note_verdict for c in noted] == NOTE_LEDGER
    assert {c.track for c in spec.claims} >= {
        "serving",
        "correctness",
        "tiered",
        "page_native",
        "peers",
        "frontier",
    }
    native = {m for c in spec.claims if c.track == "page_native" for m in c.rule["metrics"]}
    assert {"tpot_ratio", "kv_decode_vs_stored"} <= native  # page-native latency and decode-phase memory
    assert all(c.rule["kind"] in RULES for c in spec.claims)


def test_every_ratio_against_one_carries_an_interval_rule(spec):
    for c in spec.claims:
        if c.rule["kind"] in ("ratio", "quantile_ratio"):
            assert c.rule["min_n"] >= 8, c.id
            assert c.rule["holds_when"] in ("below", "above"), c.id
    assert 0 < spec.bootstrap["level"] < 1 and spec.bootstrap["resamples"] >= 1000


def _mutated(tmp_path, mutate):
    data = yaml.safe_load(CLAIMS.read_text())
    mutate(data)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["claims"][0]["rule"].update(kind="vibes"), "claims.0.rule.kind"),
        (lambda d: d["claims"][3]["rule"].pop("threshold"), "threshold"),
        (lambda d: d["claims"][3]["rule"].update(metrics=["speed"]), "claims.3.rule.metrics.0"),
        (lambda d: d["claims"][1]["note"].update(verdict="sort of"), "claims.1.note.verdict"),
        (lambda d: d["claims"][2].update(id=d["claims"][1]["id"]), "duplicate claim ids"),
        (lambda d: d["claims"][2].update(evidence="vibes.parquet"), "claims.2.evidence"),
        (lambda d: d["claims"][2]["rule"].update(min_n=0), "claims.2.rule.min_n"),
    ],
)
def test_bad_claim_files_are_refused_with_the_key(tmp_path, mutate, message):
    with pytest.raises(cfgmod.ConfigError, match=re.escape(message)):
        load_claims(_mutated(tmp_path, mutate))


def test_reference_numbers_are_internally_consistent(reference):
    """Transcription check: the note's derived columns follow from its own other columns."""
    rows = reference["promotion"]["rows"]
    assert len(rows) == 3
    for r in rows:
        assert r["stored_fraction"] == pytest.approx(1 / r["compression"], abs=6e-5)
        dvram = (r["peak_dense_gib"] - r["peak_tiered_gib"]) / r["peak_dense_gib"] * 100
        assert dvram == pytest.approx(r["dvram_pct"], abs=0.01)
        assert r["exact"] == r["n"] == 4
    assert [r["exact"] for r in reference["sweep"]["rows"]].count(True) == 2
    c = reference["correctness"]
    assert c["cached_radix"] == c["cached_bcr"] and c["mismatches"] == 0


def test_site_section_is_validated(cpu_config):
    cfgmod.validate(cpu_config)
    bad = copy.deepcopy(cpu_config)
    bad["site"]["reference_contexts"] = [8192, 16384]
    with pytest.raises(cfgmod.ConfigError, match=r"site\.reference_contexts"):
        cfgmod.validate(bad)
    bad = copy.deepcopy(cpu_config)
    bad["site"]["colour"] = "blue"
    with pytest.raises(cfgmod.ConfigError, match=r"site\.colour: unknown key"):
        cfgmod.validate(bad)
