"""Why a sandbox's kernel went away, as the most precise typed error the engine can back.

Why it is its own module: a stream that ends can mean an OOM kill, a cell's ``os._exit``, a
signal from a cell or from outside, a container removed by someone else, or an engine that
stopped answering; telling them apart takes the engine's own account of the exit and a second
look for removals, which is a question of its own beside the sandbox's lifecycle.
"""

from __future__ import annotations

import time
from typing import Any

from rlm_sandbox.errors import EngineUnavailable, SandboxCrashed, SandboxError
from rlm_sandbox.safe_text import visible


def crash_error(sandbox: Any, cause: BaseException) -> SandboxError:
    """The error for ``sandbox`` (a :class:`~rlm_sandbox.sandbox.core.Sandbox`) whose
    stream broke with ``cause``."""
    short = sandbox.id and sandbox.id[:12]
    info = sandbox.backend.exit_info(sandbox.id or "", wait_s=2.0)
    # What the kernel wrote to its diagnostic stream is the cell's to choose: it enters the
    # error (and so terminals, traces and --json) with every control character made visible.
    diag = visible(sandbox.diagnostics().strip()[-1500:])
    tail = f"; kernel said: {diag}" if diag else ""
    if not info.exists and info.error:
        return EngineUnavailable(
            f"the Docker engine stopped answering while sandbox {short} ran ({info.error})",
            hint="restart the engine (bash scripts/ensure-docker.sh), then `rlm-sandbox gc` removes what is left",
        )
    if not info.exists:
        return SandboxCrashed(
            f"the sandbox container {short} disappeared (removed from outside?)",
            reason="removed",
            hint="something else removed the container; check for a concurrent `rlm-sandbox gc`",
        )
    if info.oom_killed:
        return SandboxCrashed(
            f"the sandbox ran out of memory (limit {sandbox.config.memory}) and was killed",
            reason="oom",
            exit_code=info.exit_code,
            hint="raise the memory limit (SandboxConfig.memory / --memory) or process the input in smaller pieces",
        )
    if info.running:
        sandbox.kill_for("stream ended while running")
        return SandboxCrashed(
            f"the sandbox's stream broke while its kernel was running ({cause}){tail}", reason="stream"
        )
    code = info.exit_code
    if code in (137, 143) and not sandbox.killed_for:
        # `docker rm -f` / `docker stop` from outside look like a kill at first: the engine
        # reports the exit before the container is gone. Look once more.
        time.sleep(0.3)
        again = sandbox.backend.exit_info(sandbox.id or "")
        if not again.exists:
            return SandboxCrashed(
                f"the sandbox container {short} was killed and removed from outside",
                reason="removed",
                exit_code=code,
                hint="something else removed the container; check for a concurrent `rlm-sandbox gc`",
            )
    if code == 137 or code == -9:
        return SandboxCrashed(
            f"the sandbox kernel was killed (SIGKILL, exit 137): by a cell, the runtime, or from outside{tail}",
            reason="killed",
            exit_code=code,
            hint="if nothing outside killed it, a cell did (os.kill) or the runtime hit a limit (pids)",
        )
    if code == 143:
        return SandboxCrashed(
            f"the sandbox kernel was terminated (SIGTERM, exit 143): by a cell or from outside (docker stop){tail}",
            reason="terminated",
            exit_code=code,
        )
    return SandboxCrashed(
        f"the sandbox kernel exited with code {code}{tail}",
        reason="exit",
        exit_code=code,
        hint="a cell ended the kernel process (os._exit, a signal, or a crash); the namespace is lost",
    )
