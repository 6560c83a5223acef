#!/usr/bin/env bash
# The peer environment for bcr.peers (.venv-peers): kvpress 0.5.5 with the transformers<5.3 and
# pandas<3 it pins, layered over the main environment (.venv, built first by setup_env.sh): a .pth
# file puts the main site-packages after the peer's own, so torch is the main one (no second copy
# of several GB) while the peer's transformers and pandas shadow the main ones.
# A failed build does not fail `make`: it leaves the failed step and its log in
# .venv-peers/.bcr-peers-failed, which the peers rule records in its rows (every other track runs).
# Idempotent: a stamp keyed on the requirements and this script skips work already done.
set -uo pipefail
cd "$(dirname "$0")/.."
MAIN=${BCR_VENV:-.venv}
PEERS=${BCR_PEERS_VENV:-.venv-peers}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp_key=$(cat requirements/peers.txt scripts/setup_peers.sh | sha256sum | cut -c1-16)
stamp="$PEERS/.bcr-peers-installed-$stamp_key"
if [[ -f "$stamp" ]]; then
  exit 0
fi
log=$(mktemp)
fail() {
  mkdir -p "$PEERS"
  { echo "step: $1"; tail -n 20 "$log"; } >"$PEERS/.bcr-peers-failed"
  echo "[setup-peers] $1 failed; the peers rule will record it (see $PEERS/.bcr-peers-failed)" >&2
  exit 0
}
echo "[setup-peers] creating $PEERS over $MAIN"
rm -f "$PEERS/.bcr-peers-failed"
[[ -x "$PEERS/bin/python" ]] || "$PY" -m venv "$PEERS" >"$log" 2>&1 || fail "venv"
site=$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>"$log") \
  || fail "main environment ($MAIN)"
peer_site=$("$PEERS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>"$log") \
  || fail "peer interpreter"
echo "$site" >"$peer_site/bcr_main_env.pth"
# pip reports the main environment's packages whose pins the peer's shadow (sglang, bcr-memory wants
# transformers 5.19): expected, and not an error of this install.
"$PEERS/bin/python" -m pip install -q --disable-pip-version-check -r requirements/peers.txt >"$log" 2>&1 \
  || fail "pip install -r requirements/peers.txt"
"$PEERS/bin/python" -W ignore -c "
import kvpress, pandas, transformers, torch
assert transformers.__version__ == '5.2.0', transformers.__version__
assert pandas.__version__.startswith('2.'), pandas.__version__
" >"$log" 2>&1 || fail "import kvpress"
rm -f "$PEERS"/.bcr-peers-installed-*
touch "$stamp"
echo "[setup-peers] done"
