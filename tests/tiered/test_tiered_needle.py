"""On the trained needle model: losing the answer's page is detected; keeping every page is exact.

Uses the committed tiny checkpoint (models/tiny-needle), because only a model that really retrieves
the needle makes the answer depend on one far-away page.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from bcr import config as cfgmod
from bcr.measure import DeterminismError
from bcr.models import load_model
from bcr.prompts import synthetic_prompt_set
from bcr.tiered.harness import measure_setting
from bcr.tiered.manifest import pages_of_span
from bcr.tiered.settings import resolve
from bcr.training import needle_spec

CONTEXT = 512
CANDIDATES = 8
PPP = 1  # phantoms per page where one summary must lose a lone token
USED = 3


@pytest.fixture(scope="module")
def needle_setup(repo):
    config = cfgmod.load(repo / "config" / "config.yaml")
    if os.environ.get("BCR_TEST_MODEL_PATH"):  # validate against another checkpoint by hand
        config["model"]["path"] = os.environ["BCR_TEST_MODEL_PATH"]
    torch.set_num_threads(config["runtime"]["threads"])
    loaded = load_model(config["model"], torch.device("cpu"), root=repo)
    spec = needle_spec(config["prompts"], config["model"]["architecture"])
    candidates = synthetic_prompt_set(CONTEXT, CANDIDATES, config["prompts"]["seed"], spec)
    generation = dict(config["generation"], warmup=0, repeats=2)
    # Only prompts the model answers with a dense cache show a lost needle: the others never used it.
    dense = measure_setting(
        loaded, candidates, resolve(config, "keep_all"), [], generation, torch.device("cpu")
    )
    answered = set(dense.loc[dense["answer_correct"], "prompt_id"])
    prompts = candidates[candidates["prompt_id"].isin(answered)].head(USED)
    return config, loaded, prompts, generation


def require_retrieval(prompts) -> None:
    assert len(prompts) >= 2, (
        f"the checkpoint answers only {len(prompts)}/{CANDIDATES} needle prompts with a dense cache, so a "
        "lost needle page cannot show: the model needs more training (models/tiny-needle/training.json)"
    )


def test_forcing_the_needle_page_into_a_phantom_is_not_exact(needle_setup):
    config, loaded, prompts, generation = needle_setup
    require_retrieval(prompts)
    keep_all = resolve(config, "keep_all")  # every page exact in every layer ...
    layers = keep_all.layers(loaded.model.config.num_hidden_layers)
    forced = {}
    for p in prompts.to_dict("records"):
        needle = pages_of_span(p["needle_start"], p["needle_end"], keep_all.page_size)
        forced[p["prompt_id"]] = {layer: needle for layer in layers}  # ... except the needle's pages
    lost = dataclasses.replace(keep_all, name="needle_lost")
    df = measure_setting(
        loaded, prompts, lost, ["densify"], generation, torch.device("cpu"), forced_phantom=forced
    )
    t = df[df["decode_path"] == "densify"]
    assert len(t) == len(prompts)
    # A phantom (cluster means of the page's keys/values) can still carry part of a value token's band,
    # so not every answered prompt must diverge; most must, and every divergence must be reported as
    # the needle page lost.
    diverged = t[~t["exact"]]
    assert len(diverged) * 2 >= len(t), t[["prompt_id", "exact", "first_divergence"]]
    assert (diverged["first_divergence"] >= 1).all()  # the first token comes from the (exact) prefill
    for row in t.to_dict("records"):
        assert list(row["needle_phantom_layers"]) == layers
    for row in diverged.to_dict("records"):
        assert "needle page(s) phantom" in row["lost"]


def test_keep_all_reproduces_dense_on_needle_prompts(needle_setup):
    config, loaded, prompts, generation = needle_setup
    require_retrieval(prompts)
    df = measure_setting(
        loaded, prompts, resolve(config, "keep_all"), ["densify"], generation, torch.device("cpu")
    )
    t = df[df["decode_path"] == "densify"]
    assert t["exact"].all() and (t["max_logit_diff"] == 0.0).all()
    assert (t["compression"] == 1.0).all()
    assert t["lost"].isna().all()


# --- question modes over long trajectories (the exactness test that can fail) -------------------

LONG = {"max_new_tokens": 24, "stop_at_eos": False}


@pytest.mark.parametrize("mode", ["question_aware", "question_agnostic"])
def test_keep_all_equals_dense_over_a_long_trajectory_in_both_modes(needle_setup, mode):
    """24 greedy tokens past EOS, prefilled as context then question: keeping every page is bit-exact."""
    config, loaded, prompts, generation = needle_setup
    require_retrieval(prompts)
    df = measure_setting(
        loaded,
        prompts,
        resolve(config, "keep_all"),
        ["densify"],
        dict(generation, **LONG),
        torch.device("cpu"),
        query_mode=mode,
    )
    t = df[df["decode_path"] == "densify"]
    assert (t["n_generated"] == 24).all() and (t["query_mode"] == mode).all()
    assert t["exact"].all() and (t["max_logit_diff"] == 0.0).all()
    assert t["exact_answer"].all() and t["divergence_margin"].isna().all()
    assert t["degenerate"].dtype == bool  # reported per prompt: is the reference's tail one token repeated?


def test_losing_the_needle_page_breaks_question_agnostic_exactness_at_the_first_answer_token(needle_setup):
    """Compressed before the question arrives, the cache decides even the first answer token: with the
    queried needle's page summarised in every layer, the answer diverges at token 0."""
    config, loaded, prompts, generation = needle_setup
    require_retrieval(prompts)
    keep_all = resolve(config, "keep_all")
    layers = keep_all.layers(loaded.model.config.num_hidden_layers)
    forced = {
        p["prompt_id"]: {
            layer: pages_of_span(p["needle_start"], p["needle_end"], keep_all.page_size) for layer in layers
        }
        for p in prompts.to_dict("records")
    }
    lost = dataclasses.replace(keep_all, name="needle_lost")
    df = measure_setting(
        loaded,
        prompts,
        lost,
        ["densify"],
        generation,
        torch.device("cpu"),
        forced_phantom=forced,
        query_mode="question_agnostic",
    )
    t = df[df["decode_path"] == "densify"]
    diverged = t[~t["exact"]]
    assert len(diverged) * 2 >= len(t), t[["prompt_id", "exact", "first_divergence"]]
    assert (diverged["first_divergence"] == 0).all(), diverged[["prompt_id", "first_divergence"]]
    assert not diverged["answer_correct"].any()
    # the answer span itself differs, and the reference was not at a near-tie where it did
    assert not diverged["exact_answer"].any()
    assert (diverged["divergence_margin"] > 0).all()


def test_the_question_agnostic_mode_needs_to_know_where_the_question_starts(needle_setup):
    config, loaded, prompts, generation = needle_setup
    no_question = prompts.drop(columns=["question_start"])
    with pytest.raises(ValueError, match="question_start"):
        measure_setting(
            loaded,
            no_question.head(1),
            resolve(config, "keep_all"),
            ["densify"],
            dict(generation, warmup=0),
            torch.device("cpu"),
            query_mode="question_agnostic",
        )


# --- negative controls: a bad compressor at the same stored fraction must fail --------------------


def _all_layers(config) -> object:
    """A retain-25% setting compressing every layer (so no dense layer can carry the needle)."""
    base = resolve(config, "middle")
    return dataclasses.replace(base, name="all_ret25", band="all", band_range=(0.0, 1.0))


def test_controls_match_the_settings_exact_page_budget():
    from bcr.config import load
    from bcr.tiered import controls
    from bcr.tiered import manifest as mf

    config = load(Path(__file__).resolve().parents[2] / "config" / "config.yaml")
    base = _all_layers(config)
    n = 2048
    total = mf.n_pages(n, base.page_size)
    m = mf.select_exact(0, n, base, list(range(total)))
    budget = len(m.exact) + base.surprise_pages  # exact pages after the surprise step
    for kind in controls.CONTROLS:
        ctrl = controls.matched(base, kind, seed=3)
        c = mf.select_exact(0, n, ctrl, list(range(total)))
        surprise = 0 if kind == "recent_only" else ctrl.surprise_pages  # its window holds them
        assert len(c.exact) + surprise == budget, kind
        assert (ctrl.band, ctrl.page_size, ctrl.phantoms_per_page) == (
            base.band,
            base.page_size,
            base.phantoms_per_page,
        )
    rnd = controls.matched(base, "random_pages", seed=3)
    assert mf.select_exact(0, n, rnd, [0.0] * total).important != m.important  # not chosen by importance


def test_negative_controls_lose_exactness_where_the_method_keeps_it(needle_setup):
    """At the method's stored fraction, a control that cannot see where the needle is loses it."""
    from bcr.tiered import controls

    config, loaded, prompts, generation = needle_setup
    require_retrieval(prompts)
    base = _all_layers(config)
    run = lambda s, p=prompts: measure_setting(  # noqa: E731
        loaded, p, s, ["densify"], generation, torch.device("cpu"), query_mode="question_agnostic"
    )
    ours = run(base)
    ours = ours[ours["decode_path"] == "densify"]
    # matched on the tokens compressed (the context, before the question, in this mode)
    recent = run(controls.matched(base, "recent_only"))
    recent = recent[recent["decode_path"] == "densify"]
    assert recent["stored_fraction"].sub(ours["stored_fraction"].to_numpy()).abs().max() <= 0.01
    far = recent["needle_pages"].map(lambda pages: max(pages) < CONTEXT // base.page_size - 12)
    assert far.any() and not recent[far]["exact"].any(), recent[["prompt_id", "exact", "needle_pages"]]

    # a seeded random draw that leaves the needle's pages out of every layer's exact set
    p0 = prompts.head(1)
    for seed in range(40):
        rnd = run(controls.matched(base, "random_pages", seed=seed), p0)
        rnd = rnd[rnd["decode_path"] == "densify"].iloc[0]
        if list(rnd["needle_phantom_layers"]) == base.layers(loaded.model.config.num_hidden_layers):
            break
    else:
        pytest.fail("no seed in 0..39 leaves the needle page out of every layer")
    assert abs(rnd["stored_fraction"] - ours["stored_fraction"].iloc[0]) <= 0.01
    assert not rnd["exact"] and rnd["first_divergence"] == 0


# --- one prefill per prompt, shared by every setting and mode ------------------------------------


@pytest.mark.parametrize("mode", ["question_aware", "question_agnostic"])
def test_runs_from_a_shared_prefill_equal_fresh_runs(needle_setup, mode):
    """Compressing copies of one captured prefill computes what a fresh prefill per setting does:
    the same tokens and the same logits at every step, for the method, a control and keep_all."""
    from bcr.tiered import controls, frontier, shared
    from bcr.tiered.harness import _gen_kwargs, run_dense, run_tiered

    config, loaded, prompts, generation = needle_setup
    kw = _gen_kwargs(loaded, dict(generation, **LONG))
    settings = [resolve(config, "middle"), resolve(config, "keep_all"), resolve(config, "front_ret25")]
    settings.append(controls.matched(settings[0], "random_pages", seed=1))
    # the frontier's other page grains, compressed from a prefill captured at page 16
    settings += [s for s, knob, _ in frontier.grid(config) if knob == "page_size"]
    assert {s.page_size for s in settings} >= {8, 16, 32}
    w = max(s.obs_window for s in settings)
    for p in prompts.head(2).to_dict("records"):
        ids = torch.tensor([list(p["input_ids"])])
        split = int(p["question_start"])
        ctx, full = shared.capture(loaded, ids, split, w, settings[0].page_size)
        ref, _ = shared.run_dense_from(loaded, full, kw)
        fresh_dense = run_dense(loaded, ids, kw, split).result
        assert ref.tokens == fresh_dense.tokens
        for a, b in zip(ref.step_logits, fresh_dense.step_logits, strict=True):
            assert torch.equal(a, b)
        for s in settings:
            got, cache = shared.run_tiered_from(loaded, ctx, full, ids, s, mode, kw)
            fresh = run_tiered(loaded, ids, s, "densify", kw, None, mode, split)
            assert got.tokens == fresh.result.tokens, (p["prompt_id"], s.name)
            assert all(
                torch.equal(a, b) for a, b in zip(got.step_logits, fresh.result.step_logits, strict=True)
            )
            assert [m.to_json() for m in cache.manifests()] == [m.to_json() for m in fresh.manifests]
        # the snapshot is untouched by the runs made from it
        again, _ = shared.run_dense_from(loaded, full, kw)
        assert again.tokens == ref.tokens


def test_measure_controls_rows_and_the_dense_gate(needle_setup):
    from bcr.tiered.harness import measure_controls

    config, loaded, prompts, generation = needle_setup
    p = prompts.head(2)
    settings = [resolve(config, "front_ret25")]
    modes = ["question_aware", "question_agnostic"]
    frames = measure_controls(
        loaded, p, settings, ["recent_only", "random_pages"], generation, torch.device("cpu"), modes
    )
    assert set(frames) == set(modes)
    for mode, df in frames.items():
        assert len(df) == 2 * 3 and set(df["matched_to"]) == {"front_ret25"}
        assert (df["query_mode"] == mode).all()
        assert set(df["control"].dropna()) == {"recent_only", "random_pages"}
        assert df["control"].isna().sum() == 2
        own = df[df["control"].isna()].set_index("prompt_id")["stored_fraction"]
        for _, r in df[df["control"].notna()].iterrows():
            assert abs(r["stored_fraction"] - own[r["prompt_id"]]) <= 0.01, (mode, r["setting"])
        assert df["ttft_s"].isna().all()  # untimed: exactness only, from the shared prefill
    # the shared-prefill dense reference must equal the dense baseline file
    wrong = {pid: [0, 0, 0] for pid in p["prompt_id"]}
    with pytest.raises(DeterminismError, match="dense baseline file"):
        measure_controls(
            loaded, p, settings, ["recent_only"], generation, torch.device("cpu"), dense_reference=wrong
        )


def measure_middle_and_keep_all(needle_setup, modes, **kw):
    """``middle`` and ``keep_all`` on the densify path, one timed round: (the settings, the frames)."""
    from bcr.tiered.harness import measure

    config, loaded, prompts, generation = needle_setup
    settings = [resolve(config, "middle"), resolve(config, "keep_all")]
    gen = dict(generation, repeats=1)
    return settings, measure(loaded, prompts, settings, ["densify"], gen, torch.device("cpu"), modes, **kw)


def test_one_run_of_several_settings_and_modes_times_a_subset_and_gates_it(needle_setup):
    """The promotion runs' shape: every prompt exact from the shared prefill, the first ``timed_prompts``
    also timed on fresh runs that must reproduce it; one frame per mode, dense rows per setting."""
    modes = ["question_aware", "question_agnostic"]
    settings, frames = measure_middle_and_keep_all(needle_setup, modes, timed_prompts=1)
    prompts = needle_setup[2]
    first = prompts["prompt_id"].iloc[0]
    for mode in modes:
        df = frames[mode]
        assert len(df) == len(prompts) * len(settings) * 2 and (df["query_mode"] == mode).all()
        t = df[df["decode_path"] == "densify"]
        timed = t[t["tpot_ratio"].notna()]
        assert set(timed["prompt_id"]) == {first} and len(timed) == len(settings)
        assert (t[t["prompt_id"] != first]["repeats"] == 0).all()
        assert t[t["setting"] == "keep_all"]["exact"].all()


def test_only_the_chosen_settings_are_timed_and_the_chooser_sees_every_exactness_row(needle_setup):
    """The timed promotion run: exactness first on every prompt and setting, then fresh timed runs
    of only the setting the chooser names (the ledger's headline), still gated on the shared runs."""
    seen = {}

    def choose(frames):
        seen.update(frames)
        return ["middle"]

    _, frames = measure_middle_and_keep_all(
        needle_setup, ["question_aware"], timed_prompts=2, timed_settings=choose
    )
    df, prompts = frames["question_aware"], needle_setup[2]
    chosen = seen["question_aware"]
    assert len(chosen) == len(df) and chosen["tpot_ratio"].isna().all()  # exactness rows, no clocks
    t = df[df["decode_path"] == "densify"]
    timed = t[t["tpot_ratio"].notna()]
    assert set(timed["setting"]) == {"middle"} and len(timed) == 2
    assert (t[t["setting"] == "keep_all"]["repeats"] == 0).all()
    dense = df[(df["decode_path"] == "dense") & df["prompt_id"].isin(prompts["prompt_id"].head(2))]
    assert dense["ttft_s"].notna().all()  # the dense arms are timed beside it
    cols = ["setting", "prompt_id", "exact", "output_ids"]
    pd.testing.assert_frame_equal(  # the same exactness rows, timed or not
        df[cols].reset_index(drop=True).astype(str), chosen[cols].reset_index(drop=True).astype(str)
    )


def test_a_timed_job_over_an_untimed_jobs_rows_puts_its_clocks_in_place_and_gates_the_tokens(needle_setup):
    """The workflow's split: tiered_promotion_exact measures every setting untimed; the timed job
    reruns the headline alone on the first prompts, and its rows replace the untimed ones only where
    they compute the same tokens -- a changed token in either job's rows fails the merge."""
    from bcr.tiered.harness import measure, merge_timed

    config, loaded, prompts, generation = needle_setup
    _, exact = measure_middle_and_keep_all(needle_setup, ["question_aware"], timed_prompts=0)
    exact = exact["question_aware"].assign(run_id="untimed")  # as read back: with provenance columns
    gen = dict(generation, repeats=1)
    timed = measure(
        loaded, prompts.head(2), [resolve(config, "middle")], ["densify"], gen, torch.device("cpu")
    )["question_aware"]
    merged = merge_timed(exact, timed)
    cols = ["setting", "prompt_id", "decode_path", "exact", "output_ids", "stored_tokens"]
    pd.testing.assert_frame_equal(merged[cols].astype(str), exact[cols].astype(str))
    t = merged[merged["decode_path"] == "densify"]
    assert set(t.loc[t["tpot_ratio"].notna(), "setting"]) == {"middle"}
    assert set(t.loc[t["tpot_ratio"].notna(), "prompt_id"]) == set(prompts["prompt_id"].head(2))
    assert merged[merged["setting"] == "keep_all"]["tpot_ratio"].isna().all()
    wrong = exact.copy()
    i = wrong.index[(wrong["setting"] == "middle") & (wrong["decode_path"] == "densify")][0]
    ids = list(wrong.at[i, "output_ids"])
    wrong.at[i, "output_ids"] = [ids[0] + 1, *ids[1:]]
    with pytest.raises(DeterminismError, match="output_ids"):
        merge_timed(wrong, timed)
    with pytest.raises(ValueError, match="no exactness row"):
        merge_timed(exact[exact["setting"] != "middle"], timed)


# --- the scattered family: the answer needs several far-apart pages -----------------------------


def test_summarising_one_page_that_holds_a_scattered_value_token_changes_the_answer(needle_setup):
    """keep_all except the page of the fourth value token (far from the key), summarised by one
    phantom: the answer diverges at that token, and the row names the page it lost.  (With two
    phantoms per 16-token page the lone value token usually becomes its own cluster and survives:
    the shortcut the scattered family's recent_only control has to rule out.)"""
    from bcr.prompts import synthetic_prompt_set
    from bcr.training import needle_spec

    config, loaded, _, generation = needle_setup
    spec = needle_spec(config["prompts"], config["model"]["architecture"])
    candidates = synthetic_prompt_set(CONTEXT, CANDIDATES, config["prompts"]["seed"], spec, "scattered")
    keep_all = resolve(config, "keep_all")
    dense = measure_setting(loaded, candidates, keep_all, [], generation, torch.device("cpu"))
    prompts = candidates[candidates["prompt_id"].isin(set(dense.loc[dense["answer_correct"], "prompt_id"]))]
    require_retrieval(prompts)
    layers = keep_all.layers(loaded.model.config.num_hidden_layers)
    forced, lost_page, first_on_page = {}, {}, {}
    for p in prompts.to_dict("records"):
        page = int(p["value_positions"][3]) // keep_all.page_size
        key_pages = set(pages_of_span(p["needle_start"], p["needle_end"], keep_all.page_size))
        last = (CONTEXT - 1) // keep_all.page_size
        if page in key_pages or page == 0 or page >= last - keep_all.recent_pages + 1:
            continue  # the fourth value shares the key's, the sink's or the recent window's page
        forced[p["prompt_id"]] = {layer: [page] for layer in layers}
        lost_page[p["prompt_id"]] = page
        # the answer must part at the first value token on that page (another may share it)
        first_on_page[p["prompt_id"]] = min(
            j for j, pos in enumerate(p["value_positions"]) if int(pos) // keep_all.page_size == page
        )
    assert len(forced) >= 2, "too few answered scattered prompts with a far fourth value token"
    chosen = prompts[prompts["prompt_id"].isin(forced)]
    lost = dataclasses.replace(keep_all, name="value_page_lost", phantoms_per_page=PPP)
    df = measure_setting(
        loaded, chosen, lost, ["densify"], generation, torch.device("cpu"), forced_phantom=forced
    )
    t = df[df["decode_path"] == "densify"]
    diverged = t[~t["exact_answer"]]
    assert len(diverged) * 2 >= len(t), t[["prompt_id", "exact_answer", "first_divergence"]]
    want = diverged["prompt_id"].map(first_on_page)
    assert (diverged["first_divergence"] == want).all(), diverged[["prompt_id", "first_divergence"]]
    for row in t.to_dict("records"):
        assert lost_page[row["prompt_id"]] in list(row["needle_pages"])
    for row in diverged.to_dict("records"):
        assert f"pages [{lost_page[row['prompt_id']]}]" in row["lost"]
