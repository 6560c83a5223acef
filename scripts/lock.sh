#!/usr/bin/env bash
# Regenerate the committed locks (requirements/lock/*.txt) from their inputs: run after changing a
# pin in pyproject.toml or requirements/*.in (`make lock`), then commit the locks.  Every package of
# every environment, transitive ones included, is pinned with its hashes (`uv pip compile
# --universal --generate-hashes`); the setup scripts install exactly these files with --no-deps.
#   main.txt    .venv: pyproject.toml with [dev], SGLang's CPU import set, the installers
#   sglang.txt  SGLang itself, installed with --no-deps (its GPU kernels are not part of the CPU set)
#   peers.txt   .venv-peers: kvpress and what it pins; its torch family is the main one's (shared)
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.10
TOOL=${BCR_LOCK_VENV:-.venv-lock}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [[ ! -x "$TOOL/bin/uv" ]] || [[ $("$TOOL/bin/uv" --version | cut -d' ' -f2) != "$UV_VERSION" ]]; then
  "$PY" -m venv "$TOOL"
  "$TOOL/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION" "packaging==26.4"
fi
compile() { "$TOOL/bin/uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes "$@"; }
mkdir -p requirements/lock
export UV_CUSTOM_COMPILE_COMMAND="make lock"
compile pyproject.toml --extra dev requirements/sglang-cpu.in requirements/tools.in -o requirements/lock/main.txt
echo "sglang==0.5.23" | compile - --no-deps -o requirements/lock/sglang.txt
compile requirements/peers.in -o requirements/lock/peers.txt
# The peer takes the main environment's torch family: both locks must pin it alike.
"$TOOL/bin/python" - <<'PY'
import sys
sys.path.insert(0, "scripts")
from envlock import SHARED, pins
from pathlib import Path

main, peers = pins(Path("requirements/lock/main.txt")), pins(Path("requirements/lock/peers.txt"))
differ = [f"{n}: main {main.get(n)}, peers {v}" for n, v in peers.items() if SHARED.match(n) and main.get(n) != v]
if differ:
    sys.exit("the peer's shared packages differ from the main lock: " + "; ".join(differ))
for name in ("main", "sglang", "peers"):
    print(f"requirements/lock/{name}.txt: {len(pins(Path(f'requirements/lock/{name}.txt')))} packages")
PY
