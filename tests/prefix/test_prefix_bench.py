"""The cache-operation benchmark: its table, its loud failures, and the CLI that writes the Parquet file."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml

sim = pytest.importorskip("bcr.prefix.sim")

from bcr import cli  # noqa: E402
from bcr.prefix import bench  # noqa: E402
from bcr.prefix.cache import BCRCache  # noqa: E402
from bcr.provenance import PROVENANCE_COLUMNS  # noqa: E402


def tiny_serving(serving: dict) -> dict:
    s = copy.deepcopy(serving)
    s["workloads"] = {
        "system_repeat": {"systems": 2, "system_len": 48, "questions": 6, "question_len": 5, "output_len": 3},
        "longctx": {"prompts": 2, "prompt_len": 70, "asks": 2, "output_len": 3},
    }
    s["cache_ops"].update(
        {
            "page_sizes": [4],
            "warmup": 1,
            "repeats": 2,
            "concurrency": 2,
            "chunk": 32,
            "plain": ["system_repeat"],
        }
    )
    return s


def test_every_arm_every_op_with_equal_cached_tokens(default_config):
    s = tiny_serving(default_config["serving"])
    df = bench.run(s, log=lambda _m: None)
    arms = s["cache_ops"]["arms"]
    assert set(df["arm"]) == set(arms)
    assert set(df["workload"]) == {"system_repeat", "longctx", "system_repeat:plain"}
    sched = df[~df["workload"].str.endswith(":plain")]
    plain = df[df["workload"] == "system_repeat:plain"]
    assert set(sched["op"]) == set(bench.SCHEDULER_OPS)
    assert set(plain["op"]) == set(bench.PLAIN_OPS)
    assert len(df) == len(df.drop_duplicates(["arm", "workload", "page_size", "op"]))
    per_request = df[df["op"].isin(["match", "lock", "path", "release", bench.REQUEST_TOTAL])]
    for (_workload, _op), g in per_request.groupby(["workload", "op"]):
        requests = int(g["requests"].iloc[0])
        assert (g["n"] == requests * 2).all()  # measured replays only, warm-up excluded
        assert g["cached_tokens"].nunique() == 1  # identical reuse in every arm
    for workload in ("system_repeat", "system_repeat:plain"):
        match = df[(df["op"] == "match") & (df["workload"] == workload)]
        assert (match["tokens"] == 2 * match["cached_tokens"]).all()
        assert (match["cached_tokens"] > 0).all()
    assert (df["us_p50"] > 0).all() and (df["us_p99"] >= df["us_p50"]).all()
    assert ((df["us_p50_lo"] <= df["us_p50"]) & (df["us_p50"] <= df["us_p50_hi"])).all()
    # The per-request total is the sum of the request's ops: above each of them, in every arm.
    wide = df.pivot_table(index=["arm", "workload"], columns="op", values="us_mean")
    for op in ("match", "path", "release", "lock"):
        got = wide[[bench.REQUEST_TOTAL, op]].dropna()
        assert (got[bench.REQUEST_TOTAL] > got[op]).all(), op
    table = bench.target_table(df)
    assert set(table["op"]) == set(bench.SCHEDULER_OPS) and {"ratio", "n"} <= set(table)
    assert len(table) == len(df[df["arm"] == "bcr"])  # every op of every workload, none left out


def test_median_interval_covers_the_median_at_its_stated_rate():
    """Order-statistic bounds: at least 97.5% of samples of 100 put the true median inside (checked on
    2000 draws from a skewed law), the bounds are samples, and a sample too small gives its range."""
    rng = np.random.default_rng(0)
    median = np.log(2.0)  # of the unit exponential
    inside = 0
    for _ in range(2000):
        x = rng.exponential(size=100)
        lo, hi = bench.median_interval(x)
        assert lo in x and hi in x and lo < np.median(x) < hi
        inside += lo <= median <= hi
    assert inside / 2000 >= 0.97  # 97.5% nominal; binomial noise of 2000 draws is ~0.35%
    assert bench.median_interval(np.array([3.0, 1.0, 2.0])) == (1.0, 3.0)


class ForgetfulCache(BCRCache):
    """A broken arm: never reports more than one block cached."""

    def match_prefix(self, params):
        res = super().match_prefix(params)
        if res.device_prefix_len > self.page_size:
            return self._empty_match
        return res


def test_disagreeing_arm_fails_loudly(default_config, monkeypatch):
    s = tiny_serving(default_config["serving"])
    s["cache_ops"]["arms"] = ["radix", "bcr"]
    real = sim.make_cache

    def make_cache(arm, pools, **kw):
        if arm == "bcr":
            from sglang.srt.mem_cache.cache_init_params import CacheInitParams

            return ForgetfulCache(
                CacheInitParams(
                    disable=False,
                    req_to_token_pool=pools.req_to_token_pool,
                    token_to_kv_pool_allocator=pools.allocator,
                    page_size=pools.page_size,
                )
            )
        return real(arm, pools, **kw)

    monkeypatch.setattr(sim, "make_cache", make_cache)
    with pytest.raises(bench.CachedTokensMismatch, match="first disagreement"):
        bench.run(s, log=lambda _m: None)


def test_cli_writes_parquet_with_provenance(default_config, tmp_path):
    cfg = copy.deepcopy(default_config)
    cfg["serving"] = tiny_serving(cfg["serving"])
    cfg["serving"]["workloads"].pop("longctx")
    for key in ("run", "correctness"):  # the request-level runs are not this command's
        cfg["serving"].pop(key)
    cfg["serving"]["cache_ops"]["plain"] = []
    cfg["serving"]["cache_ops"]["arms"] = ["bcr", "unified_rust"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "serving" / "cache_ops.parquet"
    assert cli.main(["prefix", "bench", "--config", str(path), "--out", str(out), "--quiet"]) == 0
    df = pd.read_parquet(out)
    for col in ["arm", "workload", "page_size", "op", "n", "us_p50", "us_p99", *PROVENANCE_COLUMNS]:
        assert col in df.columns
    assert df["run_id"].nunique() == 1 and df["sglang"].notna().all()
