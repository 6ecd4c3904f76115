#!/usr/bin/env bash
# One-time set-up on a fresh machine: a Docker engine, uv, the project's environment, and
# the sandbox image (the offline base is built from Debian packages the first time, ~40 s
# here, minutes on a slow mirror). Every step says what it is doing on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'setup: %s\n' "$*" >&2; }
say "checking the Docker engine (starting or installing one if none answers)"
bash scripts/ensure-docker.sh
if ! command -v uv >/dev/null 2>&1; then
    say "installing uv (pip)"
    python3 -m pip install --quiet uv
fi
say "syncing the Python environment (uv sync)"
uv sync --frozen --compile-bytecode --quiet
say "building the sandbox image if missing (the first time its base is built from Debian packages: about a minute, more on a slow mirror)"
tag="$(uv run rlm-sandbox image build)"
say "sandbox image ready: $tag"
say "set-up done: try 'uv run rlm-sandbox demo' or 'uv run rlm-sandbox --help'"
