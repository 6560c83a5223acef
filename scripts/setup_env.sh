#!/usr/bin/env bash
# One install step for a fresh machine: a virtual environment in .venv with the pinned stack,
# SGLang's cache classes importable on CPU, and this package in editable mode.
# Idempotent: a stamp keyed on the requirement files skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BCR_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp_key=$(cat pyproject.toml setup.py bcr/prefix/_walk.c requirements/*.txt scripts/setup_env.sh | sha256sum | cut -c1-16)
stamp="$VENV/.bcr-installed-$stamp_key"
if [[ -f "$stamp" ]]; then
  exit 0
fi
echo "[setup] creating $VENV with $($PY --version)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade "pip>=25" setuptools wheel
# torch and torchvision first, together: a matching pair (the registry's torchvision alone fails to
# import beside a different torch build).
pip install -q "torch==2.14.1" "torchvision==0.29.1"
# SGLang without its GPU kernels; its cache classes import with the pure-Python set below.
pip install -q --no-deps "sglang==0.5.23"
pip install -q -r requirements/sglang-cpu.txt
pip install -q -e ".[dev]"
"$VENV/bin/python" -W ignore -c "from sglang.srt.mem_cache.radix_cache import RadixCache; import bcr" \
  || { echo "[setup] SGLang cache classes do not import" >&2; exit 1; }
rm -f "$VENV"/.bcr-installed-*
touch "$stamp"
echo "[setup] done"
