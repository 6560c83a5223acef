"""Start a real SGLang server for one cache arm (``python -m sglang.launch_server ...``).

Each arm's backend flag and tree core come from the arm registry (:mod:`bcr.prefix.arms`).

Every arm shares page size, memory budget, scheduling policy and seed, so only the cache differs.
:mod:`bcr.serving.servers` starts the command, waits for ``/health`` and stops it with :func:`stop`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from typing import Any

from bcr.prefix import arms

TREE_CORE_ENV = "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND"


@dataclasses.dataclass
class ServerSpec:
    """What one server run needs; everything but ``arm`` is shared by the compared arms."""

    model: str
    arm: str
    host: str = "127.0.0.1"
    port: int = 30000
    page_size: int = 16
    mem_fraction_static: float | None = None
    max_total_tokens: int | None = None
    schedule_policy: str | None = None
    chunked_prefill_size: int | None = None
    random_seed: int = 0
    tp_size: int = 1
    revision: str | None = None
    extra_args: list[str] = dataclasses.field(default_factory=list)
    python: str = sys.executable

    def __post_init__(self) -> None:
        arms.get(self.arm)  # a clear error for an unknown arm

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def args(self) -> list[str]:
        """Arguments after ``-m sglang.launch_server``."""
        out = [
            "--model-path", self.model,
            "--host", self.host,
            "--port", str(self.port),
            "--page-size", str(self.page_size),
            "--random-seed", str(self.random_seed),
            "--tp-size", str(self.tp_size),
        ]  # fmt: skip
        optional = {
            "--revision": self.revision,
            "--mem-fraction-static": self.mem_fraction_static,
            "--max-total-tokens": self.max_total_tokens,
            "--schedule-policy": self.schedule_policy,
            "--chunked-prefill-size": self.chunked_prefill_size,
        }
        for flag, value in optional.items():
            if value is not None:
                out += [flag, str(value)]
        backend = arms.get(self.arm).backend
        if backend is not None:
            out += ["--radix-cache-backend", backend]
        return out + list(self.extra_args)

    def command(self) -> list[str]:
        return [self.python, "-m", "sglang.launch_server", *self.args()]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for the server: the tree core pinned for unified arms, unset otherwise."""
        env = dict(os.environ if base is None else base)
        core = arms.get(self.arm).tree_core
        if core is None:
            env.pop(TREE_CORE_ENV, None)
        else:
            env[TREE_CORE_ENV] = core
        plugins = env.get("SGLANG_PLUGINS")
        if plugins and self.arm in ("bcr", "radix") and "bcr" not in plugins.split(","):
            raise ValueError(
                "SGLANG_PLUGINS whitelists plug-ins and leaves out 'bcr': the backend would be missing"
            )
        return env


def spec_from_config(serving: dict, model: str, arm: str, **overrides: Any) -> ServerSpec:
    """A spec from the ``serving.server`` settings (shared by all arms) plus per-run overrides."""
    server = dict(serving.get("server", {}))
    server.update(overrides)
    return ServerSpec(model=model, arm=arm, **server)


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> int:
    """Terminate the server's process group (it spawns scheduler and detokenizer children)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    return proc.returncode
