"""One RLM run in a process of its own, reporting that process's peak memory.

The memory-flood tests run the engine here, not in pytest's process, so that the figure they
assert on (``VmHWM``, the peak resident set) is the run's alone: pytest's own memory, the
scripted model server (kept in the test's process) and earlier tests do not blur it.

Usage: ``python -m tests.adversarial.memrun SPEC_JSON``; SPEC_JSON holds ``model``,
``api_base``, ``api_key``, ``run_id``, ``task``, ``rlm`` and ``sandbox`` (RLMConfig and
SandboxConfig fields), and ``context`` (a str) or ``context_bytes`` (that many ``x``).
Prints one JSON line: the result (``to_json()`` plus ``budget``), ``vmhwm_kb``,
``maxrss_kb`` and ``seconds``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def peak_rss_kb() -> int:
    """The process's peak resident set (``VmHWM``), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    spec = json.loads(sys.argv[1])
    from rlm_sandbox.rlm.api import RLM
    from rlm_sandbox.rlm.config import RLMConfig
    from rlm_sandbox.sandbox.config import SandboxConfig

    context = "x" * spec["context_bytes"] if "context_bytes" in spec else spec.get("context", "some input")
    cfg = RLMConfig(api_base=spec["api_base"], sandbox=SandboxConfig(**spec["sandbox"]), **spec["rlm"])
    engine = RLM(model=spec["model"], config=cfg, api_key=spec["api_key"])
    t0 = time.monotonic()
    result = engine.run(context=context, task=spec["task"], run_id=spec["run_id"])
    seconds = time.monotonic() - t0
    del context
    out = {
        "result": {**result.to_json(), "budget": result.budget},
        "vmhwm_kb": peak_rss_kb(),
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "seconds": round(seconds, 2),
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # Leaf calls a flood started may still wait on the (slow) model in pool threads; the run
    # is over and its containers are gone, so do not wait for them at interpreter exit.
    os._exit(code)
