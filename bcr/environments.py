"""What each software environment of a run holds: `pip freeze` of the main one (this interpreter)
and of the peer one (``peers.python``), kept beside the effective config so a reader can compare a
run's software with the committed locks (``requirements/lock/``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bcr import contracts as C

NOT_AVAILABLE = "# not available: "  # the first line of a freeze that could not be taken


def freeze(python: str | Path) -> str:
    """``python -m pip freeze --all`` of one interpreter, or one line saying why there is none."""
    try:
        proc = subprocess.run(
            [str(python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{NOT_AVAILABLE}{python}: {exc}\n"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"{NOT_AVAILABLE}{python} exited {proc.returncode}: {tail[0][-300:]}\n"
    return proc.stdout


def freezes(peers_python: str | Path | None) -> dict[str, str]:
    """Every environment of :data:`bcr.contracts.ENVIRONMENTS` by name: its freeze text."""
    out = {"main": freeze(sys.executable)}
    if "peers" in C.ENVIRONMENTS:
        out["peers"] = freeze(peers_python) if peers_python else f"{NOT_AVAILABLE}no peers section\n"
    return out


def summary(text: str) -> dict:
    """The freeze's package count, or why it is missing; and a few versions worth seeing first."""
    if text.startswith(NOT_AVAILABLE):
        return {"packages": None, "reason": text.strip()[len(NOT_AVAILABLE) :], "key": {}}
    pins = dict(
        line.split("==", 1) for line in text.splitlines() if "==" in line and not line.startswith("#")
    )
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    key = {k: pins[k] for k in ("torch", "transformers", "kvpress", "kernels", "sglang") if k in pins}
    editable = sum(line.startswith("-e ") for line in text.splitlines())
    return {"packages": len(pins) + editable, "reason": "", "key": key}
