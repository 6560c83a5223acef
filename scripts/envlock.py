"""The locks as installed environments: check one against its lock files, prune what they do not
list, and share the main environment's torch with the peer environment.

Run by scripts/setup_env.sh and scripts/setup_peers.sh with the environment's own interpreter (after
its lock is installed, so `packaging` is importable), and by tests/test_locks.py.  The lock files are
`uv pip compile --universal --generate-hashes` output (scripts/lock.sh): one `name==version ; marker`
line per package, its hashes on the continuation lines.

    python scripts/envlock.py check LOCK [LOCK ...] [--also NAME ...] [--prune] [--summary TEXT]
    python scripts/envlock.py share --lock LOCK --from SITE --to SITE
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

# The distributions the peer environment takes from the main one (several GB of CUDA build): torch and
# what only torch uses.  Every other package of the peer's lock is installed into the peer itself, so
# nothing else of the main environment is visible to the peer's transformers.
SHARED = re.compile(r"^(torch|triton|nvidia-.+|cuda-.+)$")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?\s*$")


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    """``{name: version}`` of the lock's lines whose marker holds on this interpreter."""
    from packaging.markers import Marker

    out: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        m = _PIN.match(line)
        if m and (not m.group(3) or Marker(m.group(3)).evaluate()):
            out[canonical(m.group(1))] = m.group(2)
    if not out:
        raise SystemExit(f"{lock}: no `name==version` lines; is it a lock file (scripts/lock.sh)?")
    return out


def installed() -> dict[str, str]:
    """``{name: version}`` of every distribution this interpreter sees."""
    return {canonical(d.metadata["Name"]): d.version for d in md.distributions() if d.metadata["Name"]}


def check(locks: list[Path], also: list[str], prune: bool, summary: str | None) -> int:
    """Compare the environment with its locks; with ``prune``, uninstall what no lock lists."""
    want: dict[str, str] = {}
    for lock in locks:
        want.update(pins(lock))
    have = installed()
    allowed = {canonical(a) for a in also}
    extra = sorted(n for n in have if n not in want and n not in allowed)
    if prune and extra:
        print(f"[envlock] removing {len(extra)} packages no lock lists: {' '.join(extra)}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *extra], check=True)
        have = installed()
        extra = sorted(n for n in have if n not in want and n not in allowed)
    missing = sorted(n for n in want if n not in have)
    wrong = sorted(f"{n} {have[n]} (lock: {v})" for n, v in want.items() if n in have and have[n] != v)
    problems = [("missing", missing), ("not in the lock", extra), ("other version", wrong)]
    bad = [f"{what}: {', '.join(names)}" for what, names in problems if names]
    if bad:
        print(f"[envlock] {sys.prefix} does not match {', '.join(map(str, locks))}:", *bad, sep="\n  ")
        return 1
    if summary:
        print(f"{summary}: {len(want)} packages from {', '.join(map(str, locks))}")
    return 0


def share(lock: Path, main_site: Path, peer_site: Path) -> int:
    """Symlink the main environment's SHARED distributions into the peer's site-packages, each at the
    version the peer's lock pins (the lock script checks both locks pin them alike)."""
    want = {n: v for n, v in pins(lock).items() if SHARED.match(n)}
    found = {canonical(d.metadata["Name"]): d for d in md.distributions(path=[str(main_site)])}
    wrong = [
        f"main environment has {n} {found[n].version if n in found else 'absent'}; the peer lock pins {v}"
        for n, v in sorted(want.items())
        if n not in found or found[n].version != v
    ]
    if wrong:  # checked before anything is linked: a half-shared torch is worse than none
        print("[envlock]", *wrong, sep="\n  ")
        return 1
    for old in peer_site.iterdir():  # links of an earlier build (another torch, say) go first
        if old.is_symlink() and str(Path(os.readlink(old))).startswith(str(main_site)):
            old.unlink()
    for name in sorted(want):
        tops = {Path(str(f)).parts[0] for f in found[name].files or [] if not str(f).startswith("..")}
        for top in sorted(tops - {"__pycache__"}):
            link, target = peer_site / top, main_site / top
            if link.is_symlink() or link.exists():
                continue
            link.symlink_to(target, target_is_directory=target.is_dir())
    print(f"[envlock] {len(want)} distributions shared from {main_site}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="the environment against its lock files")
    c.add_argument("locks", nargs="+", type=Path)
    c.add_argument("--also", nargs="*", default=[], help="distributions allowed beside the locks")
    c.add_argument("--prune", action="store_true", help="uninstall what no lock lists")
    c.add_argument("--summary", help="print this, then the package count, when it matches")
    s = sub.add_parser("share", help="link the main environment's torch into the peer environment")
    s.add_argument("--lock", type=Path, required=True)
    s.add_argument("--from", dest="main_site", type=Path, required=True)
    s.add_argument("--to", dest="peer_site", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.locks, args.also, args.prune, args.summary)
    return share(args.lock, args.main_site, args.peer_site)


if __name__ == "__main__":
    sys.exit(main())
