"""Content hashes of ``bcr`` sub-packages, used as Snakemake ``params`` so code changes rerun rules.

Snakemake's ``code`` rerun trigger only sees a rule's own ``run``/``shell`` text, not the modules it
imports.  A rule whose params carry ``code_hash("tiered")`` reruns when anything under
``bcr/tiered/`` changes, and only then.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


def code_hash(*parts: str) -> str:
    """sha256 (16 hex) over the named modules/sub-packages of ``bcr`` (``"tiered"``, ``"models.py"``)."""
    h = hashlib.sha256()
    for part in sorted(parts):
        target = PACKAGE_ROOT / part
        if target.is_dir():
            files = sorted(
                p for p in target.rglob("*") if p.is_file() and p.suffix in {".py", ".yaml", ".j2"}
            )
        elif target.with_suffix(".py").is_file():
            files = [target.with_suffix(".py")]
        elif target.is_file():
            files = [target]
        else:
            raise FileNotFoundError(f"code_hash: no module or sub-package bcr/{part}")
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(PACKAGE_ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]
