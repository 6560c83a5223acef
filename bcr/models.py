"""Load the model a config names: a hub id on the cluster, the tiny local checkpoint on CPU.

Both go through ``from_pretrained`` with the same dtype and attention implementation, so the
rest of the pipeline never knows which one it got.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from bcr import io, prompts

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFoundError(FileNotFoundError):
    """The configured checkpoint is missing: says where it looked and how to build it."""


class CheckpointMismatchError(io.BadFileError):
    """The checkpoint's weights are not the ones its training report recorded."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_checkpoint(path: Path) -> None:
    """A committed checkpoint's weights must hash to its training report's ``model_sha256``: a
    checkpoint edited, half-copied or swapped for another is refused, not silently measured."""
    report = path / "training.json"
    if not report.is_file():
        return  # built outside the training rule (tests): nothing recorded to check against
    want = io.read_json(report).get("model_sha256")
    got = sha256_file(path / "model.safetensors")
    if want is not None and got != want:
        raise CheckpointMismatchError(
            f"{path}/model.safetensors hashes to {got[:16]}…, but {report.name} recorded {want[:16]}…: "
            "the weights are not the trained ones (retrain with `snakemake --forcerun` on its training rule)"
        )


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: Any | None  # None for the synthetic-vocabulary tiny model
    name: str
    eos_token_ids: list[int]


def tiny_config(arch: dict) -> Qwen2Config:
    """A Qwen2 config for the tiny default model (same architecture code path as Qwen2.5)."""
    return Qwen2Config(
        vocab_size=arch["vocab_size"],
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_kv_heads"],
        head_dim=arch.get("head_dim") or arch["hidden_size"] // arch["num_heads"],
        max_position_embeddings=arch["max_position_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": float(arch["rope_theta"])},
        tie_word_embeddings=True,
        bos_token_id=prompts.BOS,
        eos_token_id=prompts.EOS,
        pad_token_id=prompts.PAD,
        use_sliding_window=False,
    )


def build_tiny_model(arch: dict, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_config(arch))


def checkpoint_path(model_cfg: dict, root: Path | None = None) -> Path:
    path = Path(model_cfg["path"])
    return path if path.is_absolute() or root is None else root / path


def load_model(model_cfg: dict, device: torch.device, root: Path | None = None) -> LoadedModel:
    """Load the configured model in eval mode on ``device`` with the configured dtype/attention."""
    dtype = DTYPES[model_cfg["dtype"]]
    attn = model_cfg["attn_implementation"]
    if model_cfg["source"] == "local":
        path = checkpoint_path(model_cfg, root)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise ModelNotFoundError(
                f"model checkpoint not found: {path} needs config.json and model.safetensors "
                f"(config key model.path). Build it with `snakemake --forcerun train_tiny_model` "
                f"or `bcr model train --config ...`."
            )
        check_checkpoint(path)
        try:
            model = Qwen2ForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=attn, local_files_only=True
            )
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # files that do not parse
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise io.BadFileError(f"{path}: not a loadable checkpoint ({why})") from None
        tokenizer = None
        eos = [prompts.EOS]
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hub_id = model_cfg["hub_id"]
        revision = model_cfg.get("revision")
        try:
            tokenizer = AutoTokenizer.from_pretrained(hub_id, revision=revision)
            model = AutoModelForCausalLM.from_pretrained(
                hub_id, revision=revision, dtype=dtype, attn_implementation=attn
            )
        except OSError as exc:
            raise ModelNotFoundError(
                f"cannot load hub model {hub_id!r} (config key model.hub_id): {exc}"
            ) from exc
        eos_cfg = model.generation_config.eos_token_id
        eos = list(eos_cfg) if isinstance(eos_cfg, list | tuple) else [eos_cfg]
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=model_cfg["name"], eos_token_ids=eos)


def load_tokenizer(model_cfg: dict):
    """The hub tokenizer (text prompts) or None (synthetic prompts need none)."""
    if model_cfg["source"] != "hub":
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_cfg["hub_id"], revision=model_cfg.get("revision"))
