#!/usr/bin/env bash
# Make sure Debian's chromium is installed: tests/browser drives it headless to check the
# trace's HTML page as a person would see it. Idempotent: does nothing when it is there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "ensure-browser: need root (or sudo) to apt-get install chromium" >&2; exit 1
    fi
fi
echo "ensure-browser: installing chromium (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "ensure-browser: chromium still missing after install" >&2; exit 1; }
