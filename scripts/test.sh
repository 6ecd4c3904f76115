#!/usr/bin/env bash
# The test command of the README: make sure an engine runs, the sandbox image exists and the
# tools the tests drive are installed, then run the whole suite (unit, integration, e2e,
# adversarial) against the real engine, then the attacks whose outcome depends on the
# container runtime (on the container itself, and a container whose controller died) once
# more under gVisor. The host-side attacks (memory, project files, terminal, traces, model
# servers) test code that no runtime changes; scripts/security_report.py runs every attack
# under both runtimes.
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
echo "== the attacks on the container again, under runsc (gVisor) =="
RLM_SANDBOX_TEST_RUNTIME=runsc uv run pytest -q tests/adversarial/test_attacks.py tests/adversarial/test_orphans.py
