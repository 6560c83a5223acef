"""Verdicts follow their evidence: flip the evidence, the verdict flips (synthetic Parquet, real claim file)."""

from __future__ import annotations

import math

import ledger_synth as synth
import pandas as pd
import pytest

from bcr import io
from bcr.io import ResultSchemaError
from bcr.ledger.claims import LEDGER_COLUMNS, evaluate
from bcr.ledger.evidence import load_results


def _promotion(root, **kw):
    """Sweep defaults, and one promoted setting ``front_ret25`` with the given tiered_frame kwargs."""
    synth.write_tiered(root, promotion={"front_ret25": kw})


# --- ratios against a threshold -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttft", "tpot", "expected"),
    [(2.2, 2.2, "rejected"), (0.8, 0.9, "supported"), (0.8, 1.5, "rejected"), (1.5, 0.8, "supported")],
)
def test_latency_verdict_follows_the_tpot_ratio(results_dir, verdicts, ttft, tpot, expected):
    """Claimed on TPOT: TTFT (a dense prefill plus compression, never below dense) is reported as a cost."""
    _promotion(results_dir, ttft=ttft, tpot=tpot)
    row = verdicts(results_dir)["tiered_improves_latency"]
    assert row["verdict"] == expected
    assert row["n"] == 8
    assert "reported as a cost, not claimed: TTFT tiered/dense" in row["reason"]
    assert "TTFT" in row["reason"] and "TPOT" in row["reason"]


def test_a_ratio_straddling_the_threshold_is_not_yet(results_dir, verdicts):
    _promotion(results_dir, ttft=1.0, tpot=1.0, noise=0.3)
    row = verdicts(results_dir)["tiered_improves_latency"]
    assert row["verdict"] == "not yet"
    assert row["ci_low"] < 1.0 < row["ci_high"]
    assert "straddles" in row["reason"]


@pytest.mark.parametrize(("compression", "expected"), [(2.3, "supported"), (1.6, "rejected")])
def test_compression_verdict_follows_the_ratio(results_dir, verdicts, compression, expected):
    _promotion(results_dir, compression=compression)
    row = verdicts(results_dir)["tiered_compression_large"]
    assert row["verdict"] == expected
    assert row["value"] == pytest.approx(compression, rel=0.03)
    assert row["threshold"] == 2.0


def test_compression_of_a_setting_that_is_not_exact_is_rejected(results_dir, verdicts):
    synth.write_tiered(
        results_dir,
        sweep={"front_ret25": dict(exact=True, compression=2.5)},
        promotion={"front_ret25": dict(compression=2.5, exact=[True] * 7 + [False])},
    )
    row = verdicts(results_dir)["tiered_compression_large"]
    assert row["verdict"] == "rejected"
    assert "not exact" in row["reason"]


def _near_tie(dense_right_on_the_miss: bool) -> dict:
    """``high`` (6x) misses the last of 9 prompts; dense answers that prompt wrong unless told
    otherwise; ``low`` (1.5x) is exact everywhere."""
    miss = [True] * 8 + [False]
    dense = [True] * 8 + [dense_right_on_the_miss]
    return {
        "sweep": {"high": dict(exact=True, compression=6.0), "low": dict(exact=True, compression=1.5)},
        "promotion": {
            "high": dict(n=9, compression=6.0, exact=miss, dense_correct=dense),
            "low": dict(n=9, compression=1.5, dense_correct=dense),
        },
    }


def test_compression_reads_both_exactness_readings_and_names_the_one_that_decided(results_dir, verdicts):
    """A miss on a prompt dense answers wrong: strict keeps `low` (1.5x, rejected); the dense-right
    reading finds `high` (6x) exact on every prompt dense answers right, and decides, saying so."""
    synth.write_tiered(results_dir, **_near_tie(dense_right_on_the_miss=False))
    got = verdicts(results_dir)
    row = got["tiered_compression_large"]
    assert row["verdict"] == "supported" and row["value"] == pytest.approx(6.0, rel=0.03)
    assert row["n"] == 9  # exact on the 8 dense-right prompts; the compression of all 9
    assert "decided on the dense-right reading" in row["reason"] and "strict reading: low" in row["reason"]
    assert "dense-right reading" in row["value_text"] and "high" in row["evidence"]
    # tiered_exact keeps the strict rule: `low` is exact on every prompt, `high` is not a candidate
    assert got["tiered_exact"]["verdict"] == "supported" and "high" not in got["tiered_exact"]["value_text"]


def test_a_miss_on_a_prompt_dense_answers_right_leaves_only_the_strict_reading(results_dir, verdicts):
    synth.write_tiered(results_dir, **_near_tie(dense_right_on_the_miss=True))
    row = verdicts(results_dir)["tiered_compression_large"]
    assert row["verdict"] == "rejected" and row["value"] == pytest.approx(1.5, rel=0.03)
    assert "decided on the strict reading" in row["reason"]
    assert "dense-right reading: low" in row["reason"]


def test_peak_memory_is_not_yet_on_cpu_and_decided_on_cuda(results_dir, verdicts):
    _promotion(results_dir, peak_ratio=None)
    row = verdicts(results_dir)["tiered_vram_reduction_large"]
    assert row["verdict"] == "not yet"
    assert "never estimated" in row["reason"]

    _promotion(results_dir, peak_ratio=0.985)  # the note's ~1.5% reduction
    assert verdicts(results_dir)["tiered_vram_reduction_large"]["verdict"] == "rejected"
    _promotion(results_dir, peak_ratio=0.5)
    assert verdicts(results_dir)["tiered_vram_reduction_large"]["verdict"] == "supported"


def test_sample_below_the_minimum_is_not_yet(results_dir, verdicts):
    _promotion(results_dir, n=5, ttft=2.2, tpot=2.2, compression=2.3)
    got = verdicts(results_dir)
    for claim in ("tiered_improves_latency", "tiered_compression_large", "tiered_exact"):
        assert got[claim]["verdict"] == "not yet", claim
        assert "minimum 8" in got[claim]["reason"] or "at least 8" in got[claim]["reason"], claim


# --- exactness ----------------------------------------------------------------------------------


def test_tiered_exact_flips_when_a_mismatch_appears(results_dir, verdicts):
    sweep = {"front_ret25": dict(exact=True, compression=2.3)}
    synth.write_tiered(results_dir, sweep=sweep, promotion={"front_ret25": dict(compression=2.3)})
    assert verdicts(results_dir)["tiered_exact"]["verdict"] == "supported"

    flags = [True] * 8
    flags[5] = False
    synth.write_tiered(
        results_dir, sweep=sweep, promotion={"front_ret25": dict(compression=2.3, exact=flags)}
    )
    row = verdicts(results_dir)["tiered_exact"]
    assert row["verdict"] == "rejected"
    assert "p4096-005" in row["reason"]  # says where it diverged


def test_exactness_is_reported_with_clopper_pearson_intervals_and_how_many_settings_it_chose_from(
    results_dir, verdicts
):
    sweep = {"front_ret25": dict(exact=True), "middle": dict(exact=True, compression=1.5)}
    promotion = {"front_ret25": dict(compression=2.3), "middle": dict(compression=1.5)}
    synth.write_tiered(results_dir, sweep=sweep, promotion=promotion)
    row = verdicts(results_dir)["tiered_exact"]
    assert row["verdict"] == "supported"
    # 8/8 exact only bounds the true exact rate below by 0.631 (95% Clopper–Pearson)
    assert "8/8 [0.631, 1.00]" in row["value_text"]
    assert row["ci_low"] == pytest.approx(0.6306, abs=1e-4) and row["ci_high"] == 1.0
    assert "chosen from 2 candidate setting(s): front_ret25, middle" in row["reason"]


def test_a_control_that_keeps_everything_does_not_make_tiered_exact_true(results_dir, verdicts):
    sweep = {"front_ret25": dict(exact=True), "keep_all": dict(exact=True, compression=1.0)}
    bad = [True] * 7 + [False]
    synth.write_tiered(
        results_dir,
        sweep=sweep,
        promotion={"front_ret25": dict(exact=bad), "keep_all": dict(compression=1.0)},
    )
    got = verdicts(results_dir)
    assert got["tiered_exact"]["verdict"] == "rejected"
    assert "keep_all" not in got["tiered_exact"]["reason"]


def test_headline_is_the_exact_setting_with_the_highest_compression(results_dir, verdicts):
    synth.write_tiered(
        results_dir,
        sweep={"a_low": dict(exact=True, compression=1.5), "b_high": dict(exact=True, compression=2.6)},
        promotion={"a_low": dict(compression=1.5), "b_high": dict(compression=2.6)},
    )
    row = verdicts(results_dir)["tiered_compression_large"]
    assert "b_high" in row["evidence"]
    assert row["value"] == pytest.approx(2.6, rel=0.03)


def test_nothing_promoted_because_nothing_was_exact_is_rejected(results_dir, verdicts):
    synth.write_tiered(
        results_dir, sweep={"middle": dict(exact=False), "front_ret25": dict(exact=False)}, promotion={}
    )
    row = verdicts(results_dir)["tiered_exact"]
    assert row["verdict"] == "rejected"
    assert "none was promoted" in row["reason"]


@pytest.mark.parametrize(
    ("n", "mismatches", "expected"),
    [(30, 0, "supported"), (30, 1, "rejected"), (12, 0, "supported"), (11, 0, "not yet")],
)
def test_longctx_correctness(results_dir, verdicts, n, mismatches, expected):
    synth.write_longctx(results_dir, n=n, mismatches=mismatches)
    row = verdicts(results_dir)["bcr_longctx_exact"]
    assert row["verdict"] == expected
    assert row["n"] == n


# --- serving, cache operations, peers, coverage -------------------------------------------------


@pytest.mark.parametrize(("ratio", "expected"), [(1.09, "rejected"), (0.85, "supported")])
def test_serving_verdict_follows_the_ttft_ratio(results_dir, verdicts, ratio, expected):
    synth.write_serving(results_dir, ratio=ratio)
    row = verdicts(results_dir)["bcr_faster_than_radix"]
    assert row["verdict"] == expected
    assert row["n"] == 200


def test_serving_at_unequal_reuse_is_not_compared(results_dir, verdicts):
    synth.write_serving(results_dir, ratio=0.5, reuse_delta=64)
    row = verdicts(results_dir)["bcr_faster_than_radix"]
    assert row["verdict"] == "not yet"
    assert "equal reuse" in row["reason"]


def test_serving_with_too_few_requests_is_not_yet(results_dir, verdicts):
    synth.write_serving(results_dir, ratio=1.3, n=20)
    assert verdicts(results_dir)["bcr_faster_than_radix"]["verdict"] == "not yet"


@pytest.mark.parametrize(
    ("factor", "n", "expected"), [(0.8, 500, "supported"), (1.2, 500, "rejected"), (0.8, 50, "not yet")]
)
def test_cache_ops_verdict(results_dir, verdicts, factor, n, expected):
    synth.write_cache_ops(results_dir, bcr_factor=factor, n=n)
    row = verdicts(results_dir)["bcr_cache_ops_cheap"]
    assert row["verdict"] == expected
    if expected != "not yet":
        assert row["value"] == pytest.approx(factor)


def test_cache_ops_claim_reads_every_op_and_the_total(results_dir, verdicts):
    """One losing cell anywhere (a plain caller's match, say) rejects the claim and is named; an
    expected op that was not measured makes it undecidable rather than silently dropped."""
    synth.write_cache_ops(results_dir, bcr_factor=0.8, slow=("system_repeat:plain", "match", 1.3))
    row = verdicts(results_dir)["bcr_cache_ops_cheap"]
    assert row["verdict"] == "rejected" and row["value"] == pytest.approx(1.3)
    assert "system_repeat:plain/match 1.30x [" in row["reason"]
    synth.write_cache_ops(results_dir, bcr_factor=0.8, slow=("longctx", "request", 1.1))
    assert verdicts(results_dir)["bcr_cache_ops_cheap"]["verdict"] == "rejected"
    synth.write_cache_ops(results_dir, bcr_factor=0.8, drop=("rag_fanout", "lock"))
    row = verdicts(results_dir)["bcr_cache_ops_cheap"]
    assert row["verdict"] == "not yet" and "rag_fanout/lock: not measured" in row["reason"]


@pytest.mark.parametrize(("factor", "expected"), [(0.96, "supported"), (0.99, "not yet"), (1.01, "not yet")])
def test_cache_ops_cells_within_their_bounds_of_the_threshold_are_undecided(
    results_dir, verdicts, factor, expected
):
    """A cell whose p50 ratio is within noise of 1 (the bounds straddle it) decides nothing either way,
    whatever side its point estimate lies on; with tighter bounds the same ratio decides."""
    synth.write_cache_ops(results_dir, bcr_factor=0.8, slow=("longctx", "path", factor), spread=0.01)
    row = verdicts(results_dir)["bcr_cache_ops_cheap"]
    assert row["verdict"] == expected
    if expected == "not yet":
        assert "p16 longctx/path" in row["reason"] or "p1 longctx/path" in row["reason"]
    synth.write_cache_ops(results_dir, bcr_factor=0.8, slow=("longctx", "path", factor), spread=0.001)
    assert verdicts(results_dir)["bcr_cache_ops_cheap"]["verdict"] == (
        "supported" if factor < 1 else "rejected"
    )


@pytest.mark.parametrize(("ours", "peer", "expected"), [(1.0, 0.5, "supported"), (0.25, 0.75, "rejected")])
def test_peers_verdict(results_dir, verdicts, ours, peer, expected):
    synth.write_peers(results_dir, ours_rate=ours, peer_rate=peer)
    for mode in ("question_aware", "question_agnostic"):
        assert verdicts(results_dir)[f"peers_equal[needle, {mode}]"]["verdict"] == expected


def test_peers_verdict_is_per_mode_and_needs_its_prompts(results_dir, verdicts):
    synth.write_peers(results_dir, modes=("question_aware",))
    got = verdicts(results_dir)
    assert got["peers_equal[needle, question_aware]"]["verdict"] == "supported"
    assert got["peers_equal[needle, question_agnostic]"]["verdict"] == "not yet"
    # per family: the scattered family has no rows here
    assert got["peers_equal[scattered, question_aware]"]["verdict"] == "not yet"
    synth.write_peers(results_dir, ours_rate=1.0, peer_rate=1.0, n=8)  # a tie, but under min_n 16
    row = verdicts(results_dir)["peers_equal[needle, question_aware]"]
    assert row["verdict"] == "not yet" and "minimum 16" in row["reason"]


@pytest.mark.parametrize(
    ("ours", "peer", "offset", "expected", "discordant"),
    [
        (0.75, 0.75, 4, "supported", "ours only 4, snapkv only 4"),  # same count, other prompts: a tie
        (14 / 16, 15 / 16, 0, "not yet", "ours only 0, snapkv only 1"),  # one prompt ahead: chance
        # six of six: p = 0.016 < 0.05 / 2 presses (Bonferroni); five of five (p = 0.031) would not be
        (10 / 16, 1.0, 0, "rejected", "ours only 0, snapkv only 6"),
        (11 / 16, 1.0, 0, "not yet", "ours only 0, snapkv only 5"),
    ],
)
def test_peers_verdict_pairs_the_prompts(results_dir, verdicts, ours, peer, offset, expected, discordant):
    """The claim reads paired outcomes: only the prompts one arm gets right and the other not count,
    and a press ahead on one of them is a tie within chance, not a defeat."""
    synth.write_peers(results_dir, ours_rate=ours, peer_rate=peer, peer_offset=offset)
    row = verdicts(results_dir)["peers_equal[needle, question_aware]"]
    assert row["verdict"] == expected, row["reason"]
    assert discordant in row["reason"], row["reason"]


@pytest.mark.parametrize(
    ("tpot", "expected"),
    [
        ({"tiered": 0.6, "snapkv": 0.9, "streaming_llm": 0.5}, "supported"),  # streaming_llm: less exact
        ({"tiered": 1.2, "snapkv": 0.9, "streaming_llm": 0.5}, "rejected"),
    ],
)
def test_peers_faster_compares_with_the_fastest_press_at_least_as_exact(
    results_dir, verdicts, tpot, expected
):
    """Ours and snapkv equally exact, streaming_llm less: the comparator is snapkv, however fast
    streaming_llm is; the verdict follows ours' TPOT ratio over snapkv's."""
    synth.write_peers(results_dir, ours_rate=0.75, peer_rate=0.75, tpot=tpot)
    row = verdicts(results_dir)["peers_faster[question_aware]"]
    assert row["verdict"] == expected, row["reason"]
    assert "snapkv" in row["reason"] and row["value"] == pytest.approx(tpot["tiered"] / 0.9, rel=1e-6)


def test_peers_faster_has_nothing_to_compare_when_no_press_is_as_exact(results_dir, verdicts):
    synth.write_peers(results_dir, ours_rate=1.0, peer_rate=0.5, tpot={"tiered": 0.5})
    row = verdicts(results_dir)["peers_faster[question_aware]"]
    assert row["verdict"] == "not yet" and "no press is exact on as many prompts as ours" in row["reason"]


def test_peers_verdict_says_why_when_every_press_failed(results_dir, verdicts):
    synth.write_peers(results_dir, error="peer environment: build failed: step: pip install")
    row = verdicts(results_dir)["peers_equal[needle, question_aware]"]
    assert row["verdict"] == "not yet" and "build failed" in row["reason"]


def test_generalisation_needs_two_models_and_two_workloads(results_dir, verdicts):
    """On the frontier: one model or one family is not yet; two of each decide, per mode, by the
    smallest stored fraction at which some grid point is exact on every prompt."""
    synth.write_frontier(results_dir)
    row = verdicts(results_dir)["generalises"]
    assert row["verdict"] == "not yet" and "1 model(s)" in row["reason"]
    for model in ("tiny-needle", "other-model"):
        for workload in ("needle", "scattered"):
            synth.write_frontier(results_dir, model, workload)
    row = verdicts(results_dir)["generalises"]
    assert row["verdict"] == "supported", row["reason"]
    assert row["value"] == pytest.approx(1 / 6.0)  # every pair exact at the least-storing point
    # the other mode has only one model and family: not yet there, whatever this mode shows
    assert verdicts(results_dir)["generalises[question_agnostic]"]["verdict"] == "not yet"
    # one pair exact only at points storing more than half the tokens: rejected
    synth.write_frontier(
        results_dir, "other-model", "scattered",
        exact={"all_ret10_n1": [False] + [True] * 7, "all_ret10_n1:retain=0.05": [True] * 7 + [False]},
    )  # fmt: skip
    row = verdicts(results_dir)["generalises"]
    assert row["verdict"] == "rejected" and "other-model/scattered" in row["reason"]
    # exact again at 1/4.5 of the tokens: supported, and the worst pair's fraction is the value
    synth.write_frontier(results_dir, "other-model", "scattered", exact={"all_ret10_n1:retain=0.05": False})
    row = verdicts(results_dir)["generalises"]
    assert row["verdict"] == "supported" and row["value"] == pytest.approx(1 / 4.5)
    # a model that answers few prompts right with the dense cache does not count: not yet again
    synth.write_frontier(results_dir, "other-model", "scattered", dense_correct=[True] * 3 + [False] * 5)
    row = verdicts(results_dir)["generalises"]
    assert row["verdict"] == "not yet" and "other-model/scattered (dense right 3/8)" in row["reason"]


# --- page-native --------------------------------------------------------------------------------


def test_page_native_claims(results_dir, verdicts):
    paths = ("dense", "densify", "paged")
    _promotion(results_dir, paths=paths, compression=2.3, kv_ratio=0.45, ttft=1.02, tpot=1.01)
    got = verdicts(results_dir)
    assert got["paged_memory"]["verdict"] == "supported"  # 0.45 / (1/2.3) ≈ 1.03 ≤ 1.25
    assert got["paged_latency"]["verdict"] == "supported"

    _promotion(results_dir, paths=paths, compression=2.3, kv_ratio=1.4, ttft=1.6, tpot=1.6)
    got = verdicts(results_dir)
    assert got["paged_memory"]["verdict"] == "rejected"
    assert got["paged_latency"]["verdict"] == "rejected"


@pytest.mark.parametrize(("static", "expected"), [(1.05, "supported"), (1.3, "rejected")])
def test_page_native_latency_answers_to_the_static_cache_too(results_dir, verdicts, static, expected):
    """Beating the stock DynamicCache (which concatenates every step) is not enough: the claim also
    reads TPOT against a preallocated StaticCache, and flips with it alone."""
    paths = ("dense", "densify", "paged")
    _promotion(results_dir, paths=paths, compression=2.3, ttft=1.02, tpot=1.01, tpot_static=static)
    row = verdicts(results_dir)["paged_latency"]
    assert row["verdict"] == expected, row["reason"]
    assert "StaticCache" in row["reason"]


@pytest.mark.parametrize(("decode", "expected"), [(0.45, "supported"), (1.4, "rejected")])
def test_page_native_memory_is_judged_on_the_decode_phase_peak(results_dir, verdicts, decode, expected):
    """The overall KV peak includes the dense prefill's (about dense's own): judged on it, no decode path
    could pass; the claim reads the decode-phase high-water mark, so it flips with what decode holds."""
    paths = ("dense", "densify", "paged")
    _promotion(results_dir, paths=paths, compression=2.3, kv_ratio=1.0, kv_decode_ratio=decode)
    row = verdicts(results_dir)["paged_memory"]
    assert row["verdict"] == expected, row["reason"]
    assert "decode-phase" in row["reason"]


def test_page_native_without_paged_rows_is_not_yet(results_dir, verdicts):
    _promotion(results_dir)
    row = verdicts(results_dir)["paged_latency"]
    assert row["verdict"] == "not yet"
    assert "paged" in row["reason"]


# --- missing and broken evidence ----------------------------------------------------------------


def test_every_claim_is_not_yet_without_results(results_dir, verdicts, spec):
    results_dir.mkdir()
    got = verdicts(results_dir)
    assert {r["claim"] for r in got.values()} == {c.id for c in spec.claims}
    for claim_id, row in got.items():
        assert row["verdict"] == "not yet", claim_id
        assert "not produced by this run" in row["reason"] or "no tiered" in row["reason"], claim_id


def test_a_file_that_breaks_its_contract_fails_loudly(results_dir, spec, cpu_config):
    synth.write_cache_ops(results_dir)
    df = pd.read_parquet(results_dir / "serving" / "cache_ops.parquet").drop(columns=["us_p50"])
    io.write_parquet(df, results_dir / "serving" / "cache_ops.parquet")
    with pytest.raises(ResultSchemaError, match="us_p50"):
        evaluate(spec, load_results(results_dir), cpu_config)


def test_ledger_has_the_contract_columns_and_is_deterministic(results_dir, spec, cpu_config):
    synth.write_full(results_dir)
    a = evaluate(spec, load_results(results_dir), cpu_config)
    b = evaluate(spec, load_results(results_dir), cpu_config)
    assert list(a.columns[: len(LEDGER_COLUMNS)]) == LEDGER_COLUMNS
    pd.testing.assert_frame_equal(a, b)
    assert set(a["verdict"]) <= {"supported", "rejected", "not yet"}


# --- the test bed against its negative controls -------------------------------------------------


@pytest.mark.parametrize(
    ("controls", "own", "expected"),
    [
        ({"recent_only": [False] * 7 + [True], "random_pages": [False] * 8}, True, "supported"),
        ({"recent_only": [False] * 4 + [True] * 4, "random_pages": [False] * 8}, True, "rejected"),
        ({"recent_only": [False] * 8, "random_pages": [False] * 8}, [True] * 7 + [False], "supported"),
        ({"recent_only": [False] * 8, "random_pages": [False] * 8}, [True] * 6 + [False] * 2, "not yet"),
    ],
)
def test_testbed_discriminates_flips_with_the_controls(results_dir, verdicts, controls, own, expected):
    """Supported only when the setting is exact on >= 80% of the prompts and every control at its
    stored fraction on <= 20%; not yet when the setting itself falls below 80%."""
    synth.write_default(results_dir)  # its headline: front_ret25, the exact setting compressing most
    synth.write_controls(results_dir, setting="front_ret25", own=own, controls=controls)
    row = verdicts(results_dir)["testbed_discriminates"]
    assert row["verdict"] == expected, row["reason"]
    if expected != "not yet":
        assert "[" in row["value_text"] and "stored" in row["value_text"]  # rates with intervals, budgets


def test_testbed_claim_reads_the_most_compressed_settings_controls(results_dir, verdicts):
    """The claim is about the promoted setting storing the least, whatever its controls say."""
    synth.write_default(results_dir)
    synth.write_controls(results_dir, setting="front_ret25", compression=1.9)
    synth.write_controls(
        results_dir,
        setting="middle",
        compression=3.0,
        controls={"recent_only": [True] * 8, "random_pages": [True] * 8},
        append=True,
    )
    row = verdicts(results_dir)["testbed_discriminates"]
    assert row["verdict"] == "rejected" and "matched to middle" in row["evidence"], row["reason"]
    synth.write_controls(results_dir, setting="keep_all", compression=9.0, append=True)  # excluded
    assert "matched to middle" in verdicts(results_dir)["testbed_discriminates"]["evidence"]


def test_controls_are_counted_on_the_answer_span_like_every_exactness(results_dir):
    """The controls table (and the claim reading it) counts the primary measure; the whole trajectory
    is reported beside it, never mixed in."""
    from bcr.ledger import tables
    from bcr.ledger.evidence import load_results

    synth.write_controls(results_dir, controls={"random_pages": [True] * 8}, modes=("question_aware",))
    path = results_dir / "tiered" / "needle" / "controls" / "question_aware" / "8192.parquet"
    df = pd.read_parquet(path)
    df.loc[df["control"].notna(), "exact"] = False  # answers kept, continuations flipped
    df.to_parquet(path)
    t = tables.controls_table(load_results(results_dir)["tiered_controls"].df)  # the one family and mode
    row = t[(t["context"] == 8192) & (t["control"] == "random_pages")].iloc[0]
    assert row["n_exact"] == 8 and row["n_exact_trajectory"] == 0


def test_the_smallest_exact_stored_fraction_moves_with_a_grid_points_rows(results_dir):
    """Edit one point's rows: the frontier's smallest exact stored fraction follows (never fixed)."""
    from bcr.ledger import tables

    def smallest(**kw):
        path = synth.write_frontier(results_dir, **kw)
        t = tables.frontier_table(pd.read_parquet(path))
        return tables.frontier_smallest(t, min_n=8).iloc[0]

    every = smallest()
    assert every["setting"] == "all_ret10_n1:retain=0.05" and every["smallest_exact_stored_fraction"] == (
        pytest.approx(1 / 6.0)
    )
    assert every["exact_low"] == pytest.approx(0.631, abs=1e-3) and every["least_stored_exact"] == "8/8"
    one_off = smallest(exact={"all_ret10_n1:retain=0.05": [True] * 7 + [False]})
    assert one_off["setting"] == "all_ret10_n1" and one_off["smallest_exact_stored_fraction"] == (
        pytest.approx(1 / 4.5)
    )
    assert one_off["least_stored_exact"] == "7/8"
    none = smallest(exact={p: [False] + [True] * 7 for p in synth.FRONTIER_POINTS})
    assert none["setting"] is None and math.isnan(none["smallest_exact_stored_fraction"])
    few = tables.frontier_smallest(
        tables.frontier_table(pd.read_parquet(synth.write_frontier(results_dir, n=4))), 8
    )
    assert few.iloc[0]["setting"] is None  # 4/4 exact is below the stated minimum sample


def test_the_timed_promotion_run_times_the_ledgers_headline(tmp_path, spec, cpu_config):
    """``bcr tiered run --time-headline``: the setting it times is the one the ledger will name, so
    a setting inexact at a smaller promotion context is not timed even when exact at this one."""
    import argparse

    from bcr.ledger.claims import headline_of
    from bcr.tiered.cli import _headline_chooser

    def frames(ctx, inexact=()):
        return pd.concat(
            [
                synth.tiered_frame(
                    "front_ret25", ctx, compression=2.3, exact=[i not in inexact for i in range(8)]
                ),
                synth.tiered_frame("middle", ctx, compression=1.6),
            ],
            ignore_index=True,
        )

    here = frames(8192)
    for inexact, expected in (((), "front_ret25"), ((5,), "middle")):
        other = tmp_path / f"other{len(inexact)}.parquet"
        frames(4096, inexact).to_parquet(other)
        args = argparse.Namespace(
            time_headline=str(synth.REPO / "config" / "claims.yaml"), headline_rows=[str(other)]
        )
        chosen = _headline_chooser(args, cpu_config)({"question_aware": here})
        ledger = headline_of(spec, cpu_config, pd.concat([pd.read_parquet(other), here]))
        assert chosen == [expected] == [ledger.setting]


def test_the_most_compressed_setting_exact_on_every_dense_right_prompt():
    """A prompt the dense reference answers wrong cannot show a lost needle: the setting that loses
    only such prompts is named beside the strict headline; losing a dense-right prompt disqualifies."""
    from bcr.ledger.tables import most_compressed_dense_right

    def rows(lost_on):
        frames = []
        for ctx in (4096, 8192):
            a = synth.tiered_frame("all_ret10", ctx, compression=6.0, exact=[i != lost_on for i in range(8)])
            b = synth.tiered_frame("front_ret25", ctx, compression=2.3)
            frames += [a, b]
        df = pd.concat(frames, ignore_index=True)
        wrong = (df["decode_path"] == "dense") & df["prompt_id"].str.endswith("-003")
        df.loc[wrong, "answer_correct"] = False
        return df

    best = most_compressed_dense_right(rows(lost_on=3), [4096, 8192], "densify", [])
    assert best.setting == "all_ret10" and best.n_dense_right == 14 and best.n_prompts == 16
    assert 5.5 < best.compression < 6.5
    assert most_compressed_dense_right(rows(lost_on=2), [4096, 8192], "densify", []).setting == "front_ret25"
    assert most_compressed_dense_right(rows(lost_on=3), [4096, 8192], "densify", ["all_ret10"]).setting == (
        "front_ret25"
    )
    assert most_compressed_dense_right(rows(lost_on=3), [4096, 16384], "densify", []) is None  # no 16K rows
