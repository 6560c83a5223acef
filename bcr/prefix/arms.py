"""The serving arms, in one registry: what each arm is and how a server or the replay gets it.

The names are the contract (``bcr.contracts.ARMS``); this module says what stands behind each one:

* ``bcr`` -- our :class:`bcr.prefix.cache.BCRCache`, ``--radix-cache-backend bcr``;
* ``radix`` -- SGLang's Python ``RadixCache``, ``--radix-cache-backend legacy_radix`` (both backends
  are registered by our ``sglang.srt.plugins`` entry point, :mod:`bcr.prefix.plugin`);
* ``unified_python`` / ``unified_rust`` -- SGLang's default ``UnifiedRadixCache`` (no backend flag),
  its tree core pinned by ``SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND`` (``sglang/srt/environ.py:741``,
  read by ``tree_core_registry.py:124-131``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bcr.contracts import ARMS


@dataclass(frozen=True)
class Arm:
    name: str
    backend: str | None  # --radix-cache-backend value; None: SGLang's default UnifiedRadixCache
    tree_core: str | None  # UnifiedRadixCache's tree core; None for the plug-in backends
    what: str


ARM_REGISTRY: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("bcr", "bcr", None, "block-hash-chained exact-prefix cache (ours)"),
        Arm("radix", "legacy_radix", None, "SGLang's Python RadixCache"),
        Arm("unified_python", None, "python", "SGLang's UnifiedRadixCache, Python tree core"),
        Arm("unified_rust", None, "rust", "SGLang's UnifiedRadixCache, Rust tree core (the default)"),
    )
}
# The --radix-cache-backend names our plug-in must register.
PLUGIN_BACKENDS = tuple(a.backend for a in ARM_REGISTRY.values() if a.backend)


def get(name: str) -> Arm:
    if name not in ARM_REGISTRY:
        raise ValueError(f"unknown arm {name!r}; choose from {', '.join(ARMS)}")
    return ARM_REGISTRY[name]
