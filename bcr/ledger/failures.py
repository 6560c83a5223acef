"""The jobs a run lost: read from Snakemake's own log after a ``--keep-going`` run, each with the
tail of its job log, so the site built from what exists says which track failed and why."""

from __future__ import annotations

import re
from pathlib import Path

_ERROR = re.compile(r"^Error in rule (\w+):")
_FIELD = re.compile(r"^\s+(output|log|jobid): (.*)$")
TAIL_LINES = 15


def parse(text: str, root: Path, tail_lines: int = TAIL_LINES) -> list[dict]:
    """Every ``Error in rule X:`` block of a Snakemake log: the rule, its outputs, its job log and
    that log's last ``tail_lines`` lines (paths relative to ``root``, the run's directory)."""
    jobs: list[dict] = []
    for line in text.splitlines():
        m = _ERROR.match(line)
        if m:
            jobs.append({"rule": m.group(1), "jobid": None, "output": [], "log": [], "tail": ""})
            continue
        f = _FIELD.match(line)
        if not (f and jobs):
            continue
        key, value = f.groups()
        if key == "jobid":
            jobs[-1]["jobid"] = value.strip()
        elif key == "log":
            jobs[-1]["log"] = [p.strip() for p in value.split(" (check log")[0].split(",") if p.strip()]
        else:
            jobs[-1]["output"] = [p.strip() for p in value.split(",") if p.strip()]
    seen, out = set(), []
    for job in jobs:  # one job reported twice (the error and the summary) counts once
        key = (job["rule"], tuple(job["output"]))
        if key in seen:
            continue
        seen.add(key)
        job["tail"] = _tail(root, job["log"], tail_lines)
        out.append(job)
    return out


def _tail(root: Path, logs: list[str], n: int) -> str:
    for log in logs:
        path = root / log
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
    return "(no job log was written)"


def latest_log(root: Path) -> Path | None:
    """The newest ``.snakemake/log/*.snakemake.log`` under ``root``."""
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None
