#!/usr/bin/env bash
# One install step for a fresh machine: a virtual environment in .venv holding exactly the committed
# lock (requirements/lock/main.txt and sglang.txt, every package pinned with its hashes, installed
# with --no-deps, anything else removed), SGLang's cache classes importable on CPU, and this package
# in editable mode.  Regenerate the locks with `make lock` (scripts/lock.sh).
# Idempotent: a stamp keyed on the locks and the package's build inputs skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BCR_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
LOCKS=(requirements/lock/main.txt requirements/lock/sglang.txt)
stamp_key=$(cat pyproject.toml setup.py bcr/prefix/_walk.c "${LOCKS[@]}" scripts/setup_env.sh scripts/envlock.py \
  | sha256sum | cut -c1-16)
stamp="$VENV/.bcr-installed-$stamp_key"
if [[ -f "$stamp" ]]; then
  echo "[setup] $VENV is installed from ${LOCKS[*]} (unchanged)"
  exit 0
fi
start=$SECONDS
echo "[setup] $VENV from ${LOCKS[*]} ($($PY --version))"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# pip's notes on this machine's configured local indexes that lack a package are noise, not errors.
pip() {
  "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
# Everything from the locks, hash-checked; SGLang without its GPU kernels (its CPU import set is in
# main.txt).  Then this package, built by the lock's setuptools (no isolated build environment, so
# nothing unlocked is fetched).
pip install -q --no-deps --require-hashes -r requirements/lock/main.txt -r requirements/lock/sglang.txt
pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" scripts/envlock.py check "${LOCKS[@]}" --also bcr-memory --prune \
  --summary "[setup] $VENV in $((SECONDS - start)) s"
"$VENV/bin/python" -W ignore -c "from sglang.srt.mem_cache.radix_cache import RadixCache; import bcr" \
  || { echo "[setup] SGLang cache classes do not import" >&2; exit 1; }
rm -f "$VENV"/.bcr-installed-*
touch "$stamp"
