"""Deterministic workload traces and the serving section's config checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bcr import config as cfgmod
from bcr.serving import workloads


def small(serving: dict) -> dict:
    s = copy.deepcopy(serving)
    s["workloads"] = {
        "system_repeat": {"systems": 2, "system_len": 40, "questions": 7, "question_len": 5, "output_len": 3},
        "system_prompts": {"systems": 6, "system_len": 32, "questions": 10, "question_len": 4, "output_len": 2},
        "rag_fanout": {
            "documents": 5, "doc_len": 8, "docs_per_set": 3, "sets": 3, "questions": 9, "question_len": 4,
            "output_len": 2,
        },
        "longctx": {"prompts": 3, "prompt_len": 50, "asks": 2, "output_len": 4},
    }  # fmt: skip
    return s


def test_traces_are_deterministic_and_seed_dependent(default_config):
    s = small(default_config["serving"])
    a, b = workloads.build_workloads(s), workloads.build_workloads(copy.deepcopy(s))
    for name in workloads.WORKLOADS:
        assert [r.rid for r in a[name]] == [r.rid for r in b[name]]
        for x, y in zip(a[name], b[name], strict=True):
            assert np.array_equal(x.prompt, y.prompt) and np.array_equal(x.output, y.output)
    s2 = copy.deepcopy(s)
    s2["seed"] += 1
    c = workloads.build_workloads(s2)
    assert not np.array_equal(a["system_repeat"][0].prompt, c["system_repeat"][0].prompt)


def test_trace_shapes(default_config):
    s = small(default_config["serving"])
    low, high = s["token_range"]
    tr = workloads.build_workloads(s)
    sr = tr["system_repeat"]
    assert len(sr) == 7 and [r.group for r in sr[:2]] == [0, 1]  # every system prompt starts cold
    for r in sr:
        assert len(r.prompt) == 45 and len(r.output) == 3
        assert np.array_equal(r.prompt[:40], sr[r.group].prompt[:40])  # same system prompt per group
    assert len({r.prompt[40:].tobytes() for r in sr}) == 7  # distinct questions
    sp = tr["system_prompts"]
    assert len(sp) == 10 and [r.group for r in sp[:6]] == list(range(6))  # each system prompt cold once
    assert len({r.prompt[:32].tobytes() for r in sp}) == 6  # many distinct system prompts
    for r in sp:
        assert len(r.prompt) == 36 and np.array_equal(r.prompt[:32], sp[r.group].prompt[:32])
    assert not np.array_equal(sp[0].prompt[:32], sr[0].prompt[:32])  # its own token stream
    rag = tr["rag_fanout"]
    assert len(rag) == 9 and all(len(r.prompt) == 3 * 8 + 4 for r in rag)
    for r in rag:
        assert np.array_equal(r.prompt[:24], rag[r.group].prompt[:24])
    lc = tr["longctx"]
    assert [r.group for r in lc] == [0, 1, 2, 0, 1, 2]  # all once, then again
    for r in lc[3:]:
        assert np.array_equal(r.prompt, lc[r.group].prompt)
    for trace in tr.values():
        for r in trace:
            both = np.concatenate([r.prompt, r.output])
            assert both.dtype == np.int64 and both.min() >= low and both.max() < high
            assert r.length == len(both)
        assert len({r.rid for r in trace}) == len(trace)


def test_default_configs_validate_and_fit_the_model():
    for name in ("config.yaml", "a100.yaml"):
        config = cfgmod.load(cfgmod.REPO_ROOT / "config" / name)
        assert workloads.check_config(config) == []


def test_cross_field_checks_name_the_bad_key(default_config):
    bad = copy.deepcopy(default_config)
    bad["serving"]["token_range"] = [3, 999]
    bad["serving"]["workloads"]["longctx"]["prompt_len"] = 9000
    bad["serving"]["workloads"]["rag_fanout"]["docs_per_set"] = 99
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.validate(bad)
    msg = str(err.value)
    assert "serving.token_range" in msg and "vocab_size" in msg
    assert "serving.workloads.longctx" in msg and "max_context" in msg
    assert "serving.workloads.rag_fanout.docs_per_set" in msg


def test_plain_caller_must_name_a_defined_workload(default_config):
    bad = copy.deepcopy(default_config)
    bad["serving"]["workloads"].pop("system_prompts")
    bad["serving"]["cache_ops"]["plain"] = ["system_prompts"]
    with pytest.raises(cfgmod.ConfigError, match=r"serving\.cache_ops\.plain"):
        cfgmod.validate(bad)
    bad["serving"]["cache_ops"]["plain"] = ["nope"]
    with pytest.raises(cfgmod.ConfigError, match=r"serving\.cache_ops\.plain"):
        cfgmod.validate(bad)


def test_schema_rejects_unknown_and_missing_keys(default_config):
    bad = copy.deepcopy(default_config)
    bad["serving"]["cache_ops"]["arms"] = ["bcr", "lru"]
    bad["serving"]["workloads"]["system_repeat"].pop("questions")
    bad["serving"]["surprise"] = 1
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.validate(bad)
    msg = str(err.value)
    assert "serving.cache_ops.arms[1]" in msg
    assert "serving.workloads.system_repeat.questions: required key is missing" in msg
    assert "serving.surprise: unknown key" in msg
