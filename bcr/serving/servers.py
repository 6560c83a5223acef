"""Start, watch and stop one server per arm: the local engine (CPU) or SGLang's real server (GPU).

Whichever engine, :func:`start` gives a :class:`Server` -- its process, log and, once healthy, URL
-- and every server put in :func:`stopped_on_exit`'s list has its process group stopped on the way
out, whatever the way out is: the block's end, an exception, Ctrl-C, or SIGTERM from Snakemake
(``bcr serving`` turns SIGTERM into ``SystemExit``).
A server that exits or never becomes healthy raises :class:`ServerFailed` with the tail of its log;
the log itself is kept.  Ports never clash between concurrent runs: the local engine binds port 0
and announces the port it got in a ready file; SGLang gets a port the OS just handed out.  Both
listen on 127.0.0.1 only.

``force_miss`` sets ``SGLANG_RADIX_FORCE_MISS=1``: SGLang's ``match_kv_cache`` then turns every
match into a miss (0% reuse), in both engines, isolating the cache's own overhead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from bcr.prefix import launcher
from bcr.serving import local

ENGINES = ("local", "sglang")
FORCE_MISS_ENV = "SGLANG_RADIX_FORCE_MISS"
HOST = "127.0.0.1"


class ServerFailed(RuntimeError):
    """A server exited, or never became healthy; the message ends with the tail of its log."""


@dataclasses.dataclass
class Server:
    """A started server process; ``url`` is known once :meth:`wait_healthy` has returned."""

    arm: str
    proc: subprocess.Popen
    log: Path
    locate: Callable[[], str | None]  # its base URL once it can be known (None: not yet)
    timeout_s: float
    url: str | None = None

    def wait_healthy(self) -> str:
        """Poll until ``/health`` answers 200; :class:`ServerFailed` if the process exits first or
        the timeout passes."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerFailed(
                    f"{self.arm} server exited with code {code} before becoming healthy\n{log_tail(self.log)}"
                )
            url = self.locate()
            if url is not None and _healthy(url):
                self.url = url
                return url
            time.sleep(0.2)
        raise ServerFailed(f"{self.arm} server not healthy after {self.timeout_s:.0f}s\n{log_tail(self.log)}")

    def check_alive(self) -> None:
        """Raise :class:`ServerFailed` (with the log's tail) if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise ServerFailed(
                f"{self.arm} server exited with code {code} during the run\n{log_tail(self.log)}"
            )

    def stop(self, grace_s: float = 20.0) -> int:
        """SIGTERM the server's process group, SIGKILL it after ``grace_s``; its exit code."""
        return launcher.stop(self.proc, grace_s)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"--- last {min(lines, len(text))} lines of {path} ---\n" + "\n".join(text[-lines:])


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _env(force_miss: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if force_miss:
        env[FORCE_MISS_ENV] = "1"
    else:
        env.pop(FORCE_MISS_ENV, None)
    return env


def _healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _popen(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_local(
    configs: list[str], arm: str, log: Path, *, force_miss: bool = False, timeout_s: float = 300.0
) -> Server:
    """The local engine for ``arm`` in its own process (reading the config files ``configs``)."""
    ready = log.with_name(log.name + ".ready.json")
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", local.__name__, "--arm", arm, "--ready-file", str(ready), "--host", HOST]
    for c in configs:
        cmd += ["--config", c]

    def locate() -> str | None:
        if not ready.is_file():
            return None
        return f"http://{HOST}:{json.loads(ready.read_text())['port']}"

    return Server(arm, _popen(cmd, _env(force_miss), log), log, locate, timeout_s)


def start_sglang(
    serving: dict, model: str, arm: str, log: Path, *, force_miss: bool = False, timeout_s: float = 1200.0
) -> Server:
    """``python -m sglang.launch_server`` for ``arm`` with the shared ``serving.server`` settings."""
    spec = launcher.spec_from_config(serving, model, arm, host=HOST, port=free_port())
    proc = _popen(spec.command(), _env(force_miss, spec.env()), log)
    return Server(arm, proc, log, lambda: spec.base_url, timeout_s)


def start(
    engine: str, *, configs: list[str], config: dict, arm: str, log: Path, force_miss: bool = False
) -> Server:
    """Start the server of ``engine`` for ``arm`` (not yet waited for)."""
    if engine == "local":
        return start_local(configs, arm, log, force_miss=force_miss)
    if engine == "sglang":
        model = config["model"].get("hub_id") or config["model"]["path"]
        return start_sglang(config["serving"], model, arm, log, force_miss=force_miss)
    raise ValueError(f"unknown serving engine {engine!r}; choose from {ENGINES}")


@contextlib.contextmanager
def stopped_on_exit() -> Iterator[list[Server]]:
    """A list to put started servers in: every one is stopped when the block exits, however."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for srv in started:
            srv.stop()
