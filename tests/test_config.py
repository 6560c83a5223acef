"""Config validation: every bad key is named together with the file it came from."""

from __future__ import annotations

import copy

import pytest
import yaml

from bcr import config as cfgmod


def _flat_keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _flat_keys(v, f"{prefix}{k}.")
    return out


def test_every_file_in_config_validates_as_it_is_used(repo):
    """Run configs alone (as the Snakefile or the profile loads them), the claim file by its schema."""
    from bcr.ledger.claims import load_claims

    used = {
        "config.yaml": lambda p: cfgmod.load(p)["run_name"],
        "a100.yaml": lambda p: cfgmod.load(p)["run_name"],
        # an overlay: layered over the default, as its header says
        "cpu-full.yaml": lambda p: (
            cfgmod.load([p.parent / "config.yaml", p])["tiered"]["frontier"]["grid"] == "product"
        ),
        "claims.yaml": lambda p: load_claims(p).claims,
        "reference.yaml": lambda p: yaml.safe_load(p.read_text())["sweep"],
    }
    files = sorted(p.name for p in (repo / "config").iterdir() if p.suffix == ".yaml")
    assert files == sorted(used), "a config file without a validation here: say how it is used"
    for name, check in used.items():
        assert check(repo / "config" / name), name


def test_study_config_stands_alone(repo):
    """config/a100.yaml sets everything the study needs; none of the tiny model's keys are in it."""
    study = yaml.safe_load((repo / "config" / "a100.yaml").read_text())
    keys = _flat_keys(study)
    for tiny in ("model.architecture", "model.training", "model.path", "prompts.needle"):
        assert tiny not in keys
    assert cfgmod.load(repo / "config" / "a100.yaml")["prompts"]["renderer"] == "text"


def test_a_complete_config_cannot_be_layered_over_another(repo):
    """Layering the default under the study would change study values silently; it is refused."""
    default, study = repo / "config" / "config.yaml", repo / "config" / "a100.yaml"
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.load([default, study])
    msg = str(err.value)
    assert str(study) in msg and str(default) in msg and "complete config" in msg
    with pytest.raises(cfgmod.ConfigError, match="complete config"):
        cfgmod.load([study, default])


def test_an_overlay_must_follow_a_complete_config(tmp_path, repo):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("prompts:\n  n_prompts: 3\n")
    with pytest.raises(cfgmod.ConfigError, match="pass it first"):
        cfgmod.load([overlay, repo / "config" / "a100.yaml"])
    study = cfgmod.load([repo / "config" / "a100.yaml", overlay])
    assert study["prompts"]["n_prompts"] == 3 and "architecture" not in study["model"]


def test_schemas_are_package_data():
    """Validation reads the schemas from the installed package, not from a repository checkout."""
    names = sorted(f.name for f in cfgmod.SCHEMAS.iterdir() if f.name.endswith(".schema.yaml"))
    assert "config.schema.yaml" in names and "tiered.schema.yaml" in names


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
        (lambda c: c["serving"].__setitem__("engine", "vllm"), "serving.engine", "is not one of"),
        (
            lambda c: c["serving"]["run"]["workloads"].append("system_prompts_x"),
            "serving.run.workloads[2]",
            "is not one of",
        ),
        (
            lambda c: c["serving"]["workloads"].pop("rag_fanout"),
            "serving.run.workloads",
            "not a workload of this config",
        ),
        (
            lambda c: c["serving"]["correctness"].__setitem__("baseline", "bcr"),
            "serving.correctness",
            "both 'bcr'",
        ),
        (
            lambda c: c["serving"]["workloads"].pop("longctx"),
            "serving.correctness",
            "needs the longctx workload",
        ),
        (lambda c: c["serving"].pop("local"), "serving.local", "pool size"),
        (lambda c: c["peers"]["contexts"].append(3000), "peers.contexts", "not in prompts.contexts"),
        (lambda c: c["peers"]["presses"].append("h2o"), "peers.presses[8]", "h2o"),
        (
            lambda c: c["serving"]["run"].__setitem__("force_miss", ["longctx"]),
            "serving.run.force_miss",
            "not one of serving.run.workloads",
        ),
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


def test_extra_models_are_selected_by_name_and_names_are_unique(default_config):
    names = cfgmod.model_names(default_config)
    assert names[0] == default_config["model"]["name"] and len(names) >= 2
    other = cfgmod.with_model(default_config, names[1])
    assert other["model"]["name"] == names[1] and other["prompts"] == default_config["prompts"]
    assert cfgmod.with_model(default_config, None) is default_config
    with pytest.raises(cfgmod.ConfigError, match="--model 'nope': not a model of this config"):
        cfgmod.with_model(default_config, "nope")
    dup = copy.deepcopy(default_config)
    dup["extra_models"].append(copy.deepcopy(dup["model"]))
    with pytest.raises(
        cfgmod.ConfigError, match=r"extra_models: model name\(s\) \['tiny-needle'\] used twice"
    ):
        cfgmod.validate(dup)
    bad = copy.deepcopy(default_config)
    del bad["extra_models"][0]["architecture"]
    with pytest.raises(cfgmod.ConfigError, match=r"extra_models\[0\]\.architecture: required key is missing"):
        cfgmod.validate(bad)
