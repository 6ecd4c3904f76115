#!/usr/bin/env bash
# Tools the tests drive as a person would: tmux (the live view in a real terminal) and
# Debian's chromium (the trace's HTML page in a real headless browser), plus openssl (the
# certificates of the second, TLS-speaking Docker engine). Idempotent.
set -euo pipefail
missing=()
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "ensure-test-tools: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "ensure-test-tools: need root (or sudo) for apt-get" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for tool in "${missing[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "ensure-test-tools: $tool still missing after install" >&2; exit 1; }
done
