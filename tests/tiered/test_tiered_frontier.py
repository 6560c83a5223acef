"""The frontier's grid: one knob at a time (or every combination) around a base, each point valid."""

from __future__ import annotations

import copy

import pytest

from bcr import config as cfgmod
from bcr.tiered import frontier
from bcr.tiered.settings import resolve


@pytest.fixture
def config(default_config):
    return copy.deepcopy(default_config)


def test_axes_grid_changes_one_knob_per_point_base_first_no_duplicates(config):
    points = frontier.grid(config)
    base = resolve(config, config["tiered"]["frontier"]["base"])
    assert points[0] == (base, "base", base.name)
    names = [s.name for s, _, _ in points]
    assert len(names) == len(set(names))
    axes = config["tiered"]["frontier"]["axes"]
    # each axis value other than the base's own is one point
    expected = sum(len([v for v in vs if str(v) != str(getattr(base, k))]) for k, vs in axes.items())
    assert len(points) == 1 + expected
    for s, knob, value in points[1:]:
        changed = {k for k in frontier.GRID_KNOBS if getattr(s, k) != getattr(base, k)}
        assert changed == {knob}, (s.name, changed)
        assert s.name == f"{base.name}:{knob}={value}"


def test_a_page_size_point_keeps_the_exact_windows_token_spans(config):
    base = resolve(config, config["tiered"]["frontier"]["base"])
    by_page = {s.page_size: s for s, knob, _ in frontier.grid(config) if knob == "page_size"}
    small, large = by_page[8], by_page[32]
    assert small.recent_pages * 8 == base.recent_pages * base.page_size
    assert small.sink_pages * 8 == base.sink_pages * base.page_size
    assert large.recent_pages == 1 and large.recent_pages * 32 >= base.obs_window
    assert small.band == large.band == base.band and small.retain == base.retain


def test_points_without_exceptions_ignore_the_exception_signal_and_taper(config):
    config["tiered"]["frontier"]["grid"] = "product"
    config["tiered"]["frontier"]["axes"] = {
        "exceptions": [0.0, 0.02],
        "exception_signal": ["reconstruction", "attention"],
        "exception_taper": [0.0, 0.5],
    }
    points = frontier.grid(config)
    # the base (0.01, reconstruction, flat); 0.0 once; 0.02 under every signal and taper
    assert sorted((s.exceptions, s.exception_signal, s.exception_taper) for s, _, _ in points[1:]) == [
        (0.0, "reconstruction", 0.0),
        (0.02, "attention", 0.0),
        (0.02, "attention", 0.5),
        (0.02, "reconstruction", 0.0),
        (0.02, "reconstruction", 0.5),
    ]


def test_product_grid_covers_every_combination(config):
    config["tiered"]["frontier"]["grid"] = "product"
    config["tiered"]["frontier"]["axes"] = {"retain": [0.1, 0.25], "band": ["middle", "all"]}
    points = frontier.grid(config)
    assert len(points) == 1 + 4  # the base (retain 0.05) and 2 x 2 combinations
    assert {(s.retain, s.band) for s, _, _ in points[1:]} == {
        (0.1, "middle"), (0.1, "all"), (0.25, "middle"), (0.25, "all")
    }  # fmt: skip
    assert all(knob == "grid" for _, knob, _ in points[1:])


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        ({"base": "nope"}, "tiered.frontier.base", "unknown setting 'nope'"),
        ({"axes": {"band": ["middle", "deep"]}}, "tiered.frontier.axes.band[1]", "unknown band 'deep'"),
        ({"axes": {"phantoms_per_page": [2, 16]}}, "tiered.frontier.axes", "16 phantoms on a 16-token page"),
        (
            {"grid": "product", "axes": {"page_size": [2], "phantoms_per_page": [2]}},
            "tiered.frontier.axes",
            "2 phantoms on a 2-token page",
        ),
        ({"axes": {"depth": [1]}}, "tiered.frontier.axes.depth", "unknown key"),
    ],
)
def test_bad_frontier_config_names_the_key(config, edit, key, message):
    config["tiered"]["frontier"].update(edit)
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.validate(config)
    assert key in str(err.value) and message in str(err.value)
