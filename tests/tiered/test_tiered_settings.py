"""Tiered settings: inheritance, bands, and bad input named by key before any job runs."""

from __future__ import annotations

import pytest

from bcr import config as cfgmod
from bcr.tiered import settings as ts


def _error(config: dict) -> str:
    with pytest.raises(cfgmod.ConfigError) as exc:
        cfgmod.validate(config, source="test.yaml")
    return str(exc.value)


def test_default_settings_resolve_as_one_knob_variations(default_config):
    base = ts.resolve(default_config, "middle")
    for name, knob, value in [
        ("middle_ret35", "retain", 0.35),
        ("middle_ret50", "retain", 0.50),
        ("middle_surp12", "surprise_pages", 12),
        ("middle_phantom8", "phantoms_per_page", 8),
    ]:
        s = ts.resolve(default_config, name)
        diff = {k for k in ts.KNOBS if getattr(s, k) != getattr(base, k)}
        assert diff == {knob}, name
        assert getattr(s, knob) == value
    front = ts.resolve(default_config, "front_ret25")
    assert {k for k in ts.KNOBS if getattr(front, k) != getattr(base, k)} == {"band"}
    assert ts.resolve(default_config, "keep_all").retain == 1.0


def test_bands_pick_layers_by_depth_centre(default_config):
    assert ts.resolve(default_config, "middle").layers(4) == [1, 2]
    assert ts.resolve(default_config, "front_ret25").layers(4) == [0, 1, 2]
    assert ts.resolve(default_config, "keep_all").layers(4) == [0, 1, 2, 3]
    assert ts.resolve(default_config, "middle").layers(28) == list(range(7, 21))


@pytest.mark.parametrize("retain", [-0.1, 1.5])
def test_retain_outside_unit_interval(default_config, retain):
    default_config["tiered"]["settings"]["middle_ret35"]["retain"] = retain
    assert "tiered.settings.middle_ret35.retain" in _error(default_config)


def test_unknown_band(default_config):
    default_config["tiered"]["settings"]["front_ret25"]["band"] = "back"
    msg = _error(default_config)
    assert "tiered.settings.front_ret25.band" in msg and "unknown band 'back'" in msg


@pytest.mark.parametrize("page_size", [0, -16])
def test_page_size_not_positive(default_config, page_size):
    default_config["tiered"]["settings"]["middle"]["page_size"] = page_size
    assert "tiered.settings.middle.page_size" in _error(default_config)


def test_phantoms_not_below_page_size(default_config):
    default_config["tiered"]["settings"]["middle_phantom8"]["phantoms_per_page"] = 16
    msg = _error(default_config)
    assert "tiered.settings.middle_phantom8.phantoms_per_page" in msg and "page_size 16" in msg


def test_inherited_page_size_conflict_names_the_inheriting_setting(default_config):
    default_config["tiered"]["settings"]["middle"]["page_size"] = 8  # middle_phantom8 keeps 8 phantoms
    default_config["tiered"]["settings"]["middle"]["obs_window"] = 16
    msg = _error(default_config)
    assert "tiered.settings.middle_phantom8.phantoms_per_page" in msg


def test_unknown_setting_in_promotion_override(default_config):
    default_config["tiered"]["promotion"]["override"] = ["front_ret25", "front_ret52"]
    msg = _error(default_config)
    assert "tiered.promotion.override[1]" in msg and "front_ret52" in msg


def test_unknown_base_and_sweep_names(default_config):
    default_config["tiered"]["settings"]["middle_ret35"]["base"] = "midle"
    default_config["tiered"]["sweep"]["settings"].append("nope")
    at = len(default_config["tiered"]["sweep"]["settings"]) - 1
    msg = _error(default_config)
    assert "tiered.settings.middle_ret35.base" in msg
    assert f"tiered.sweep.settings[{at}]" in msg


def test_obs_window_must_fit_the_recent_window(default_config):
    default_config["tiered"]["settings"]["middle"]["obs_window"] = 64  # recent window is 2 x 16 tokens
    assert "tiered.settings.middle.obs_window" in _error(default_config)


def test_valid_override_passes(default_config):
    default_config["tiered"]["promotion"]["override"] = ["middle", "keep_all"]
    cfgmod.validate(default_config)
    assert ts.promotion_override(default_config) == ["middle", "keep_all"]
