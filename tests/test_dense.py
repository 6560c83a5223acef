"""Dense baseline: correct columns, and the determinism gate fails loudly on any disagreement."""

from __future__ import annotations

import pytest
import torch

from bcr import prompts
from bcr.dense import DENSE_COLUMNS, run_dense
from bcr.measure import DeterminismError
from bcr.models import LoadedModel

GEN = {"max_new_tokens": 4, "stop_at_eos": False, "warmup": 1, "repeats": 2}


def _prompts(n=2, context=128):
    return prompts.synthetic_prompt_set(context, n, seed=3, spec=prompts.NeedleSpec())


def test_dense_rows(random_tiny_model):
    loaded = LoadedModel(random_tiny_model, None, "tiny", [prompts.EOS])
    df = run_dense(loaded, _prompts(), GEN, torch.device("cpu"), progress=False)
    assert list(df.columns) == DENSE_COLUMNS
    assert (df["n_generated"] == 4).all() and (df["repeats"] == 2).all()
    assert df["peak_mem_bytes"].isna().all()
    assert (df["kv_bytes"] > 0).all()
    assert (df["ttft_s"] > 0).all() and (df["tpot_s"] > 0).all()


def test_untimed_rows_keep_tokens_and_drop_clocks(random_tiny_model):
    """A job that shares its cores keeps no clocks, and its tokens are the timed job's."""
    loaded = LoadedModel(random_tiny_model, None, "tiny", [prompts.EOS])
    timed = run_dense(loaded, _prompts(), GEN, torch.device("cpu"), progress=False)
    untimed = run_dense(loaded, _prompts(), GEN, torch.device("cpu"), timed=False, progress=False)
    assert list(untimed.columns) == DENSE_COLUMNS
    assert untimed["ttft_s"].isna().all() and untimed["tpot_s"].isna().all()
    assert [list(x) for x in untimed["output_ids"]] == [list(x) for x in timed["output_ids"]]
    assert (untimed["kv_bytes"] == timed["kv_bytes"]).all() and (untimed["repeats"] == 2).all()


class _Flaky(torch.nn.Module):
    """Wraps a model and perturbs the logits on every other generation: a nondeterministic kernel."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, 0

    def forward(self, **kw):
        out = self.model(**kw)
        if int(kw["position_ids"][0, 0]) == 0:  # a generation starts (its first prefill chunk)
            self.calls += 1
        if self.calls % 2 == 0:
            out.logits = out.logits.clone()
            out.logits[..., 200] += 1e4
        return out


def test_determinism_gate_fires(random_tiny_model):
    loaded = LoadedModel(_Flaky(random_tiny_model), None, "tiny", [prompts.EOS])
    with pytest.raises(DeterminismError, match="differ between repeats"):
        run_dense(loaded, _prompts(1), {**GEN, "warmup": 0}, torch.device("cpu"), progress=False)
