"""Model loading: a missing checkpoint is a clear error; the training script really learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcr import models, prompts, training


def test_missing_checkpoint_is_a_clear_error(tmp_path, default_config):
    mcfg = {**default_config["model"], "path": str(tmp_path / "nowhere")}
    with pytest.raises(models.ModelNotFoundError, match=r"model\.path") as err:
        models.load_model(mcfg, torch.device("cpu"))
    assert "train_tiny_model" in str(err.value)


def test_save_load_roundtrip(tmp_path, default_config, random_tiny_model):
    random_tiny_model.save_pretrained(tmp_path / "m")
    mcfg = {**default_config["model"], "path": str(tmp_path / "m")}
    loaded = models.load_model(mcfg, torch.device("cpu"))
    ids = torch.randint(16, 256, (1, 20))
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, random_tiny_model(input_ids=ids).logits)
    assert loaded.eos_token_ids == [prompts.EOS]


def _value_token_accuracy(model, spec, context: int, n: int) -> float:
    """Teacher-forced accuracy on the value tokens alone (band chance: 1 / spec.value_band)."""
    rng = np.random.default_rng(11)
    x, y = prompts.synthetic_batch(rng, n, context, spec)
    with torch.inference_mode():
        logits = model(input_ids=torch.from_numpy(x), logits_to_keep=spec.answer_len).logits
    pred = logits.argmax(-1)[:, : spec.value_len]
    return float((pred == torch.from_numpy(y)[:, : spec.value_len]).float().mean())


def test_small_training_run_learns_retrieval():
    """A scaled-down run must learn to fetch the needle's value tokens from context.

    Knowing only each value's band gives 1/16 per token; the trained model must do clearly
    better, which it can only by attending to the needle.
    """
    arch = {
        "vocab_size": 64, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
        "intermediate_size": 128, "rope_theta": 10000.0, "max_position_embeddings": 512,
    }  # fmt: skip
    spec = prompts.NeedleSpec(vocab_size=64, key_len=1, value_len=2)
    stage = {"length": 32, "batch": 32, "max_steps": 400, "target_accuracy": 0.9}
    tr = {"seed": 0, "lr": 3e-3, "eval_prompts": 32, "stages": [stage]}
    untrained = _value_token_accuracy(training.build_tiny_model(arch, 0), spec, 32, 256)
    result = training.train(arch, tr, spec, progress=False)
    trained = _value_token_accuracy(result.model, spec, 32, 256)
    assert untrained < 0.1
    assert trained >= 3 / spec.value_band, (untrained, trained)


def test_a_checkpoint_whose_weights_differ_from_its_training_report_is_refused(tmp_path, default_config):
    """Each committed checkpoint loads only with the weights its training report hashed."""
    import shutil

    from bcr import config as cfgmod

    for mcfg in cfgmod.models(default_config):
        src = models.checkpoint_path(mcfg, cfgmod.REPO_ROOT)
        assert (src / "training.json").is_file(), f"{mcfg['name']}: no committed training report"
        models.check_checkpoint(src)  # the committed one passes
        bad = tmp_path / mcfg["name"]
        shutil.copytree(src, bad)
        blob = bytearray((bad / "model.safetensors").read_bytes())
        blob[-1] ^= 1  # one bit of the last weight
        (bad / "model.safetensors").write_bytes(bytes(blob))
        with pytest.raises(models.CheckpointMismatchError, match=r"training\.json recorded"):
            models.load_model({**mcfg, "path": str(bad)}, torch.device("cpu"))
