#!/usr/bin/env bash
# One-time set-up on a fresh machine: a Docker engine, uv, the project's environment, and
# the sandbox image (the offline base is built from Debian packages the first time, ~40 s).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-docker.sh
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen --compile-bytecode --quiet
uv run rlm-sandbox image build >/dev/null
echo "set-up done: try 'uv run rlm-sandbox --help'" >&2
