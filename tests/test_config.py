"""Config validation: every bad key is named together with the file it came from."""

from __future__ import annotations

import copy

import pytest
import yaml

from bcr import config as cfgmod


def test_shipped_configs_are_valid(repo):
    for name in ("config.yaml", "a100.yaml"):
        cfg = cfgmod.load(repo / "config" / name)
        assert cfg["run_name"]


def _write(tmp_path, cfg):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize(
    ("mutate", "key", "fragment"),
    [
        (lambda c: c.__setitem__("surprise", 1), "surprise", "unknown key"),
        (lambda c: c["model"].__setitem__("dtype", "float33"), "model.dtype", "is not one of"),
        (lambda c: c["prompts"].__setitem__("contexts", [2048, -8]), "prompts.contexts[1]", "minimum"),
        (lambda c: c["runtime"].__setitem__("threads", "two"), "runtime.threads", "is not of type"),
        (lambda c: c.pop("model"), "model", "required key is missing"),
        (lambda c: c["model"].pop("path"), "model.path", "required key is missing"),
        (lambda c: c["generation"].__setitem__("repeats", 1), "generation.repeats", "minimum"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, default_config, mutate, key, fragment):
    cfg = copy.deepcopy(default_config)
    mutate(cfg)
    path = _write(tmp_path, cfg)
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.load(path)
    msg = str(err.value)
    assert f"- {key}: " in msg and fragment in msg
    assert str(path) in msg


def test_overrides_merge_key_by_key(tmp_path, repo):
    override = tmp_path / "o.yaml"
    override.write_text("prompts:\n  n_prompts: 3\n")
    cfg = cfgmod.load([repo / "config" / "config.yaml", override])
    assert cfg["prompts"]["n_prompts"] == 3
    assert cfg["prompts"]["contexts"] == [2048, 4096, 8192]


def test_config_hash_ignores_key_order(default_config):
    reordered = dict(reversed(list(default_config.items())))
    assert cfgmod.config_hash(reordered) == cfgmod.config_hash(default_config)
    changed = copy.deepcopy(default_config)
    changed["runtime"]["seed"] = 1
    assert cfgmod.config_hash(changed) != cfgmod.config_hash(default_config)


def test_not_yaml_is_a_clear_error(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(cfgmod.ConfigError, match="not valid YAML"):
        cfgmod.load(p)
