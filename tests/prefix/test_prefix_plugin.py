"""The SGLang plug-in (entry point, registry, factories) and the server launcher's command."""

from __future__ import annotations

import argparse
import shlex
from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest

sim = pytest.importorskip("bcr.prefix.sim")

from bcr.contracts import ARMS  # noqa: E402
from bcr.prefix import launcher, plugin  # noqa: E402
from bcr.prefix.cache import BCRCache  # noqa: E402


def test_entry_point_is_installed_in_sglangs_plugin_group():
    eps = {ep.name: ep for ep in entry_points(group="sglang.srt.plugins")}
    assert "bcr" in eps, "reinstall the package (pip install -e .) so the entry point is registered"
    assert eps["bcr"].load() is plugin.register


def test_load_plugins_registers_both_backends():
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, registered_radix_cache_backends
    from sglang.srt.plugins import load_plugins

    load_plugins()  # what the scheduler process does first (scheduler.py:6323)
    assert {"bcr", "legacy_radix"} <= set(registered_radix_cache_backends())
    assert get_radix_cache_factory("bcr") is plugin.bcr_factory
    plugin.register()  # a second call (another process role) must not raise
    assert get_radix_cache_factory("legacy_radix") is plugin.legacy_radix_factory


def _ctx(ps=16, **flags):
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.registry import TreeCacheBuildContext

    pools = sim.make_pools(ps, 4096, 4, 256)
    params = CacheInitParams(
        disable=False,
        req_to_token_pool=pools.req_to_token_pool,
        token_to_kv_pool_allocator=pools.allocator,
        page_size=ps,
    )
    base = dict(
        is_hybrid_swa=False, is_hybrid_ssm=False, enable_hierarchical_cache=False, disable_radix_cache=False
    )
    base.update(flags)
    return TreeCacheBuildContext(
        server_args=SimpleNamespace(random_seed=5),
        params=params,
        tp_worker=None,
        model_config=None,
        tp_size=1,
        tp_rank=0,
        tp_group=None,
        **base,
    )


def test_factories_build_the_caches_and_refuse_what_they_cannot_hold():
    from sglang.srt.mem_cache.radix_cache import RadixCache

    sim.configure_sglang(16)
    cache = plugin.bcr_factory(_ctx())
    assert isinstance(cache, BCRCache) and cache.page_size == 16
    assert cache.hasher.q == plugin.bcr_factory(_ctx()).hasher.q  # same seed, same keys on every rank
    assert type(plugin.legacy_radix_factory(_ctx())) is RadixCache
    for flag in ("is_hybrid_swa", "is_hybrid_ssm", "enable_hierarchical_cache"):
        with pytest.raises(ValueError, match="does not support"):
            plugin.bcr_factory(_ctx(**{flag: True}))
        with pytest.raises(ValueError, match="does not support"):
            plugin.legacy_radix_factory(_ctx(**{flag: True}))


def _parse(spec: launcher.ServerSpec) -> argparse.Namespace:
    """Parse the built command with SGLang's own CLI definition (no server is started)."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    cmd = spec.command()
    assert cmd[:3] == [spec.python, "-m", "sglang.launch_server"]
    return parser.parse_args(cmd[3:])


@pytest.mark.parametrize(
    ("arm", "backend", "core"),
    [
        ("bcr", "bcr", None),
        ("radix", "legacy_radix", None),
        ("unified_rust", None, "rust"),
        ("unified_python", None, "python"),
    ],
)
def test_server_command_selects_the_arm_and_nothing_else_differs(arm, backend, core):
    spec = launcher.ServerSpec(
        model="Qwen/Qwen2.5-7B-Instruct",
        arm=arm,
        port=31000,
        page_size=16,
        mem_fraction_static=0.85,
        chunked_prefill_size=8192,
        schedule_policy="lpm",
        extra_args=["--log-level", "warning"],
    )
    ns = _parse(spec)
    assert ns.radix_cache_backend == backend
    assert (ns.model_path, ns.port, ns.page_size) == ("Qwen/Qwen2.5-7B-Instruct", 31000, 16)
    assert (ns.mem_fraction_static, ns.chunked_prefill_size, ns.schedule_policy) == (0.85, 8192, "lpm")
    assert ns.log_level == "warning"
    env = spec.env({"SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "stale", "PATH": "/bin"})
    assert env.get("SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND") == core
    assert env["PATH"] == "/bin"
    others = {a: _parse(launcher.ServerSpec(model=spec.model, arm=a, port=31000)) for a in ARMS}
    differing = {k for a in others for k, v in vars(others[a]).items() if v != vars(others["bcr"])[k]}
    assert differing <= {"radix_cache_backend"}


def test_spec_from_config_and_guards(default_config):
    spec = launcher.spec_from_config(default_config["serving"], "models/tiny-needle", "bcr", port=30123)
    assert spec.port == 30123 and spec.page_size == default_config["serving"]["server"]["page_size"]
    assert "--radix-cache-backend bcr" in shlex.join(spec.command())
    with pytest.raises(ValueError, match="unknown arm"):
        launcher.ServerSpec(model="m", arm="lru")
    with pytest.raises(ValueError, match="SGLANG_PLUGINS"):
        launcher.ServerSpec(model="m", arm="bcr").env({"SGLANG_PLUGINS": "other"})
    assert launcher.ServerSpec(model="m", arm="bcr").env({"SGLANG_PLUGINS": "other,bcr"})
