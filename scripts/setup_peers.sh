#!/usr/bin/env bash
# The peer environment for bcr.peers (.venv-peers): exactly requirements/lock/peers.txt (kvpress 0.5.5
# with the transformers 5.2 / pandas 2 it pins), installed with --no-deps and hash-checked, anything
# else removed.  Its torch family (scripts/envlock.py SHARED: torch, triton, nvidia-*, cuda-*) is the
# main environment's, symlinked in at the version both locks pin, so there is no second copy of
# several GB; nothing else of the main environment is on the peer's path, so no package the main one
# carries (kernels, huggingface_hub, tokenizers, ...) can reach the peer's transformers.
# A failed build does not fail `make`: it leaves the failed step and its log in
# .venv-peers/.bcr-peers-failed, which the peers rule records in its rows (every other track runs).
# Idempotent: a stamp keyed on both locks and the install scripts skips work already done.
set -uo pipefail
cd "$(dirname "$0")/.."
MAIN=${BCR_VENV:-.venv}
PEERS=${BCR_PEERS_VENV:-.venv-peers}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
LOCK=requirements/lock/peers.txt
stamp_key=$(cat "$LOCK" requirements/lock/main.txt scripts/setup_peers.sh scripts/envlock.py | sha256sum | cut -c1-16)
stamp="$PEERS/.bcr-peers-installed-$stamp_key"
if [[ -f "$stamp" ]]; then
  echo "[setup-peers] $PEERS is installed from $LOCK (unchanged)"
  exit 0
fi
start=$SECONDS
log=$(mktemp)
fail() {
  mkdir -p "$PEERS"
  { echo "step: $1"; tail -n 20 "$log"; } >"$PEERS/.bcr-peers-failed"
  echo "[setup-peers] $1 failed; the peers rule will record it (see $PEERS/.bcr-peers-failed)" >&2
  exit 0
}
echo "[setup-peers] $PEERS from $LOCK (torch shared from $MAIN)"
rm -f "$PEERS/.bcr-peers-failed" "$PEERS"/.bcr-peers-installed-*
[[ -x "$PEERS/bin/python" ]] || "$PY" -m venv "$PEERS" >"$log" 2>&1 || fail "venv"
site=$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>"$log") \
  || fail "main environment ($MAIN)"
peer_site=$("$PEERS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>"$log") \
  || fail "peer interpreter"
rm -f "$peer_site/bcr_main_env.pth"  # the old layering put all of the main environment on the path
"$MAIN/bin/python" scripts/envlock.py share --lock "$LOCK" --from "$site" --to "$peer_site" >"$log" 2>&1 \
  || fail "share torch from $MAIN"
"$PEERS/bin/python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r "$LOCK" \
  >"$log" 2>&1 || fail "pip install -r $LOCK"
"$PEERS/bin/python" scripts/envlock.py check "$LOCK" --prune >"$log" 2>&1 || fail "the environment against $LOCK"
"$PEERS/bin/python" -m pip check >"$log" 2>&1 || fail "pip check"
"$PEERS/bin/python" -W ignore -c "
import kvpress, pandas, transformers, torch
assert transformers.__version__ == '5.2.0', transformers.__version__
assert pandas.__version__.startswith('2.'), pandas.__version__
" >"$log" 2>&1 || fail "import kvpress"
"$PEERS/bin/python" scripts/envlock.py check "$LOCK" --summary "[setup-peers] $PEERS in $((SECONDS - start)) s"
touch "$stamp"
