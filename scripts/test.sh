#!/usr/bin/env bash
# The test command of the README: make sure an engine runs, the sandbox image exists and the
# tools the tests drive are installed, then run the whole suite (unit, integration, e2e,
# adversarial) against the real engine, and the adversarial suite once more under gVisor.
# With arguments, only `pytest ARGS` runs (after the same set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-docker.sh
bash scripts/ensure-test-tools.sh
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen --compile-bytecode --quiet
uv run rlm-sandbox image build
if [ $# -gt 0 ]; then
    exec uv run pytest -q "$@"
fi
uv run pytest -q
echo "== the adversarial suite again, under runsc (gVisor) =="
RLM_SANDBOX_TEST_RUNTIME=runsc uv run pytest -q tests/adversarial
