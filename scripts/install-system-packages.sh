#!/usr/bin/env bash
# Debian packages the test suite drives for real: headless Chromium (the HTML report is loaded in it)
# and Prometheus with promtool (alert rules are unit-tested and evaluated by a real server).
# Idempotent and quick when everything is there; fails loudly, naming the package, when it cannot install.
set -euo pipefail
wanted=()
command -v chromium >/dev/null || wanted+=(chromium)
command -v prometheus >/dev/null && command -v promtool >/dev/null || wanted+=(prometheus)
if ((${#wanted[@]} == 0)); then
  exit 0
fi
command -v apt-get >/dev/null || { echo "install-system-packages: need apt-get for: ${wanted[*]}" >&2; exit 1; }
echo "install-system-packages: apt-get install ${wanted[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null \
    || { echo "install-system-packages: apt-get install ${wanted[*]} failed" >&2; exit 1; }
fi
