"""Model loading: a missing checkpoint is a clear error; the training script really learns."""

from __future__ import annotations

import pytest
import torch

from bcr import models, prompts, training


def test_missing_checkpoint_is_a_clear_error(tmp_path, default_config):
    mcfg = {**default_config["model"], "path": str(tmp_path / "nowhere")}
    with pytest.raises(models.ModelNotFoundError, match="model.path") as err:
        models.load_model(mcfg, torch.device("cpu"))
    assert "train_tiny_model" in str(err.value)


def test_save_load_roundtrip(tmp_path, default_config, random_tiny_model):
    random_tiny_model.save_pretrained(tmp_path / "m")
    mcfg = {**default_config["model"], "path": str(tmp_path / "m")}
    loaded = models.load_model(mcfg, torch.device("cpu"))
    ids = torch.randint(16, 256, (1, 20))
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, random_tiny_model(input_ids=ids).logits)
    assert loaded.eos_token_ids == [prompts.EOS]


def test_small_training_run_learns_retrieval():
    """A scaled-down curriculum must learn to copy the needle's value (chance is ~1/240 per token)."""
    torch.set_num_threads(2)
    arch = {
        "vocab_size": 64, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
        "intermediate_size": 128, "rope_theta": 10000.0, "max_position_embeddings": 512,
    }  # fmt: skip
    spec = prompts.NeedleSpec(vocab_size=64, key_len=1, value_len=2)
    tr = {"seed": 0, "lr": 3e-3, "eval_prompts": 32, "stages": [{"length": 48, "batch": 32, "max_steps": 400, "target_accuracy": 0.95}]}
    result = training.train(arch, tr, spec, progress=False)
    assert training.needle_accuracy(result.model, spec, 48, 32, seed=5) >= 0.8
