"""SGLang plug-in: registers the ``bcr`` and ``legacy_radix`` prefix-cache backends.

SGLang's scheduler process calls ``load_plugins()`` (``sglang/srt/managers/scheduler.py:6323``),
which runs every entry point of group ``sglang.srt.plugins`` (``sglang/srt/plugins/__init__.py:
103-138``).  Our entry point (``pyproject.toml``) is :func:`register`; it adds two factories to the
registry read by ``--radix-cache-backend NAME`` (``sglang/srt/mem_cache/registry.py:58, 223-235``):

* ``bcr`` -- :class:`bcr.prefix.cache.BCRCache`;
* ``legacy_radix`` -- SGLang's Python ``RadixCache``, which the default selection chain no longer
  reaches (it builds ``UnifiedRadixCache``, registry.py:83-146).

No fork, no monkeypatch: both factories only construct a cache from the ``TreeCacheBuildContext``.
"""

from __future__ import annotations

from typing import Any


def _check_plain(ctx: Any, name: str) -> None:
    """Both backends key full-attention KV only; refuse what they cannot represent, loudly."""
    unsupported = {
        "hybrid sliding-window attention": ctx.is_hybrid_swa,
        "hybrid SSM / mamba state": ctx.is_hybrid_ssm,
        "hierarchical cache (HiCache)": ctx.enable_hierarchical_cache,
        "DSA sparse attention": getattr(ctx, "is_dsa", False),
    }
    bad = [what for what, on in unsupported.items() if on]
    if bad:
        raise ValueError(f"--radix-cache-backend {name} does not support {', '.join(bad)}")


def bcr_factory(ctx: Any) -> Any:
    """``--radix-cache-backend bcr``: a BCRCache on the server's pools.

    The hash multiplier is derived from the server's random seed so every TP rank builds identical
    keys (a per-process random multiplier could let ranks disagree on a collision).
    """
    from bcr.prefix.cache import BCRCache
    from bcr.prefix.chain import ChainHasher

    _check_plain(ctx, "bcr")
    seed = getattr(ctx.server_args, "random_seed", None)
    return BCRCache(ctx.params, hasher=ChainHasher(seed=0 if seed is None else int(seed)))


def legacy_radix_factory(ctx: Any) -> Any:
    """``--radix-cache-backend legacy_radix``: SGLang's Python RadixCache (radix_cache.py:281)."""
    from sglang.srt.mem_cache.radix_cache import RadixCache

    _check_plain(ctx, "legacy_radix")
    return RadixCache(ctx.params)


# One factory per backend the arm registry names (bcr.prefix.arms.PLUGIN_BACKENDS; tested equal).
FACTORIES = {"bcr": bcr_factory, "legacy_radix": legacy_radix_factory}


def register() -> None:
    """Entry point (group ``sglang.srt.plugins``): idempotent, safe in every SGLang process."""
    from sglang.srt.mem_cache.registry import register_radix_cache_backend, registered_radix_cache_backends

    have = set(registered_radix_cache_backends())
    for name, factory in FACTORIES.items():
        if name not in have:
            register_radix_cache_backend(name, factory)
