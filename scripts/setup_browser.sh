#!/usr/bin/env bash
# Headless browser for the site test (tests/ledger/test_browser.py): Debian's `chromium`.
# Idempotent: does nothing when a chromium binary is already on PATH.  Installing needs root
# (apt-get); without it, say what to run instead of failing obscurely later.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "[setup_browser] chromium is missing; install it with: sudo apt-get install -y chromium" >&2
  exit 1
fi
echo "[setup_browser] installing Debian chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "[setup_browser] chromium did not install" >&2; exit 1; }
echo "[setup_browser] $(chromium --version 2>/dev/null || echo chromium installed)"
