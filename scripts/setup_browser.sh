#!/usr/bin/env bash
# Headless browser for the site test (tests/ledger/test_ledger_browser.py): Debian's `chromium` and its
# WebDriver, `chromium-driver` (the test drives the built site through chromedriver).
# Idempotent: does nothing when both binaries are already on PATH.  Installing needs root (apt-get);
# without it, say what to run instead of failing obscurely later.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "[setup_browser] missing ${missing[*]}; install with: sudo apt-get install -y chromium chromium-driver" >&2
  exit 1
fi
echo "[setup_browser] installing Debian ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# both packages always, so chromium and its driver come from the same release (same version)
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
for exe in chromium chromedriver; do
  command -v "$exe" >/dev/null 2>&1 || { echo "[setup_browser] $exe did not install" >&2; exit 1; }
done
echo "[setup_browser] $(chromium --version 2>/dev/null || echo chromium installed); $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
