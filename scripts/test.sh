#!/usr/bin/env bash
# The test command of the README: make sure an engine runs and the sandbox image exists,
# then run the whole suite (unit, integration, adversarial) against the real engine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-docker.sh
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen --compile-bytecode --quiet
uv run rlm-sandbox image build
exec uv run pytest -q "$@"
