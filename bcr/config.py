"""Load and validate pipeline settings.

One validator serves both entry points: Snakemake's ``common.smk`` (before any job is scheduled)
and the ``bcr`` CLI (when a rule, or a person, calls it).  JSON-schema errors are reported with the
dotted key and the file they came from; checks a schema cannot express (cross-field rules) live
next to the track that owns the keys and are listed in :data:`TRACK_CHECKS`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import json
from collections.abc import Callable, Iterable
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO_ROOT = Path(__file__).resolve().parent.parent
# Package data (``bcr/schemas``), so validation works wherever the package is installed.
SCHEMAS = importlib.resources.files("bcr") / "schemas"
MAIN_SCHEMA = "config.schema.yaml"

# "module:function" names of cross-field checks, each ``check(config) -> list[(key, message)]``.
TRACK_CHECKS: list[str] = [
    "bcr.config:check_models",
    "bcr.peers.plan:check_config",
    "bcr.tiered.frontier:check",
    "bcr.tiered.settings:check",
    "bcr.ledger.checks:check",
    "bcr.serving.workloads:check_config",
]


class ConfigError(ValueError):
    """An invalid setting; the message names the key and the file."""


def _load_yaml(path: Path | Traversable) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _registry() -> Registry:
    resources = []
    for f in sorted((f for f in SCHEMAS.iterdir() if f.name.endswith(".schema.yaml")), key=lambda f: f.name):
        resources.append((f.name, Resource.from_contents(_load_yaml(f), default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


def _key(path: Iterable[Any]) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else str(p) for p in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def schema_errors(config: dict) -> list[tuple[str, str]]:
    """All schema violations as (dotted key, message), sorted by key."""
    registry = _registry()
    schema = registry.contents(MAIN_SCHEMA)
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    out = []
    for err in validator.iter_errors(config):
        key = _key(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            for name in extra:
                out.append((_key([*err.absolute_path, name]), "unknown key"))
            continue
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else err.message
            out.append((_key([*err.absolute_path, missing]), "required key is missing"))
            continue
        out.append((key, err.message))
    return sorted(set(out))


def _track_checks() -> list[Callable[[dict], list[tuple[str, str]]]]:
    checks = []
    for spec in TRACK_CHECKS:
        module, func = spec.split(":")
        checks.append(getattr(importlib.import_module(module), func))
    return checks


def validate(config: dict, source: str = "<config>") -> dict:
    """Raise :class:`ConfigError` listing every bad key (schema first, then cross-field checks)."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the config must be a mapping, got {type(config).__name__}")
    problems = schema_errors(config)
    if not problems:
        for check in _track_checks():
            problems.extend(check(config))
    if problems:
        lines = "\n".join(f"  - {key}: {msg}" for key, msg in problems)
        raise ConfigError(f"invalid config ({source}):\n{lines}")
    return config


def check_layers(layers: Iterable[tuple[str, dict]]) -> None:
    """A complete config (one that sets ``run_name``) stands alone: only overlays may follow it.

    Layering the study's ``config/a100.yaml`` over the CPU default would let every key the study
    does not set (the tiny architecture, the needle, the synthetic renderer) leak into the study run;
    refusing it is what keeps a study value from being changed by a file nobody meant to apply.
    """
    layers = list(layers)
    complete = [name for name, data in layers if isinstance(data, dict) and "run_name" in data]
    if len(complete) > 1:
        raise ConfigError(
            f"{complete[1]} is a complete config (it sets run_name) and cannot be layered over "
            f"{complete[0]}: it would inherit every key of {complete[0]} it does not set.  Pass one "
            "complete config; overlays (files without run_name) may follow it."
        )
    if complete and layers[0][0] != complete[0]:
        raise ConfigError(
            f"{complete[0]} is a complete config (it sets run_name): pass it first, then overlays"
        )


def read_layers(paths: Iterable[str | Path]) -> list[tuple[str, dict]]:
    """Each file's mapping, by name, checked as a stack of layers (:func:`check_layers`)."""
    layers = []
    for p in map(Path, paths):
        data = _load_yaml(p) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the config must be a mapping")
        layers.append((str(p), data))
    check_layers(layers)
    return layers


def load(paths: str | Path | Iterable[str | Path]) -> dict:
    """Load a complete config and any overlays (later files override earlier, key by key); validate."""
    if isinstance(paths, str | Path):
        paths = [paths]
    layers = read_layers(paths)
    merged: dict = {}
    for _, data in layers:
        merged = deep_merge(merged, data)
    return validate(merged, source=", ".join(name for name, _ in layers))


def models(config: dict) -> list[dict]:
    """Every model the config names: the primary ``model`` first, then ``extra_models``."""
    return [config["model"], *config.get("extra_models", [])]


def model_names(config: dict) -> list[str]:
    return [m["name"] for m in models(config)]


def with_model(config: dict, name: str | None) -> dict:
    """The config with ``model`` set to the named one (primary or extra): every command that reads
    ``config["model"]`` then runs on it unchanged."""
    if name is None or name == config["model"]["name"]:
        return config
    for entry in config.get("extra_models", []):
        if entry["name"] == name:
            return {**config, "model": entry}
    raise ConfigError(
        f"--model {name!r}: not a model of this config (model.name, extra_models: "
        f"{', '.join(model_names(config))})"
    )


def check_models(config: dict) -> list[tuple[str, str]]:
    """Model names are unique (they name result folders and checkpoints), and every model reads the
    primary's prompt sets: on synthetic prompts, the same vocabulary size."""
    names = model_names(config)
    dup = sorted({n for n in names if names.count(n) > 1})
    out = [("extra_models", f"model name(s) {dup} used twice")] if dup else []
    vocab = lambda m: (m.get("architecture") or {}).get("vocab_size")  # noqa: E731
    if (config.get("prompts") or {}).get("renderer") == "synthetic":
        for i, m in enumerate(config.get("extra_models", [])):
            if vocab(m) != vocab(config["model"]):
                out.append(
                    (
                        f"extra_models[{i}].architecture.vocab_size",
                        f"{vocab(m)} differs from model.architecture.vocab_size {vocab(config['model'])}: "
                        "every model reads the same synthetic prompt sets",
                    )
                )
    return out


def resolve_base(entries: dict[str, dict], name: str, seen: tuple[str, ...] = ()) -> dict:
    """Entry ``name`` merged over its ``base`` chain (``middle_ret35: {base: middle, retain: 0.35}``).

    Raises KeyError for an unknown name or base and ValueError for a loop; the track checks turn both
    into config errors naming the key.
    """
    if name in seen:
        raise ValueError(f"base chain loops: {' -> '.join([*seen, name])}")
    entry = dict(entries[name])
    base = entry.pop("base", None)
    if base is None:
        return entry
    if base not in entries:
        raise KeyError(base)
    merged = resolve_base(entries, base, (*seen, name))
    merged.update(entry)
    return merged


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_hash(config: dict) -> str:
    """Stable hash of the settings (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
