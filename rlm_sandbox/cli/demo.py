"""``rlm-sandbox demo``: a real run (real containers, the real HTTP path) on a generated log,
against a scripted model served on 127.0.0.1, so it needs no key.

The log is the same bytes for the same size (a fixed seed), so it is made once per size into
the user's cache directory under a name that says what it holds, and reused read-only: two
demos at once never write the file the other one reads, and a demo's trace can be replayed
against the log it ran on. Each run writes its own trace.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from rlm_sandbox.cli.execute import execute
from rlm_sandbox.cli.options import MODEL_FLAGS, budget_options, setting_options
from rlm_sandbox.cli.output import fail, parse_size
from rlm_sandbox.errors import RLMSandboxError

DEMO_SEED = 7
DEMO_DEPTH = 2  # the demo shows a recursion: children with containers of their own


@click.command("demo")
@setting_options(*MODEL_FLAGS, help={"model": "use this model instead of the built-in scripted one"})
@click.option("--size", default="4m", show_default=True, help="size of the generated log (e.g. 4m, 100m)")
@click.option(
    "--task", "task_kind", type=click.Choice(["count", "search"]), default="count", show_default=True
)
@click.option("--latency", type=float, default=0.0, help="simulated latency of the scripted model, seconds")
@budget_options(defaults={"depth": DEMO_DEPTH})
def demo(
    model: str | None, sub_model: str | None, size: str, task_kind: str, latency: float, **o: Any
) -> None:
    """A real RLM run (real containers, the real model HTTP path) on a built-in generated log.

    With no --model it serves a scripted model on 127.0.0.1, so no key is needed.
    """
    from rlm_sandbox.cli.execute import default_trace
    from rlm_sandbox.testing import ScriptedModelServer

    err_echo = lambda m: click.echo(m, err=True)  # noqa: E731
    try:
        run_id = None
        if not o["trace_path"]:
            run_id, o["trace_path"] = default_trace("demo")
        stats = demo_log(parse_size(size))
        path = stats.path
        task = 'How many lines contain "ERROR disk"?' if task_kind == "count" else "What is the secret code?"
        truth = str(stats.disk_errors) if task_kind == "count" else (stats.needle or "").split()[-1]
        err_echo(f"demo: {stats.size_bytes / 1e6:.1f} MB log, {stats.lines} lines at {path}")
        err_echo(f"demo: task: {task}  (the true answer is {truth})")
        if model:
            code = execute(model, sub_model, task, path, o, run_id=run_id)
        else:
            with ScriptedModelServer(latency_s=latency) as server:
                o["api_base"] = server.url
                err_echo(f"demo: no --model given: a scripted model is served at {server.url}")
                code = execute(
                    server.model_name, None, task, path, o, api_key="sk-scripted-local", run_id=run_id
                )
    except RLMSandboxError as exc:
        fail(exc, o["debug"])
    sys.exit(code)


def demo_log(size_bytes: int) -> Any:
    """The demo's log of ``size_bytes`` and the truth about it (:class:`LogStats`).

    Made once into ``$XDG_CACHE_HOME/rlm-sandbox/demo/`` under a name that holds the size,
    the seed and a digest of the generator (another generator makes another file), then
    reused read-only. The truth is kept next to it; a pair that does not agree is made again.
    Written to a private temporary name and renamed into place, so no reader sees half a log."""
    import hashlib
    import json
    import os
    import tempfile

    from rlm_sandbox.testing import generate_log, logs
    from rlm_sandbox.user_dirs import cache_dir, private_dir

    recipe = hashlib.sha256(Path(logs.__file__).read_bytes()).hexdigest()[:12]
    where = private_dir(cache_dir() / "demo", what="demo cache")
    log = where / f"log-{size_bytes}-seed{DEMO_SEED}-{recipe}.log"
    truth = log.with_suffix(".json")
    known = _cached_truth(log, truth)
    if known is not None:
        return known
    fd, tmp = tempfile.mkstemp(prefix=".log-", dir=where)
    os.close(fd)
    try:
        stats = generate_log(tmp, size_bytes, seed=DEMO_SEED)
        os.chmod(tmp, 0o400)
        facts = {
            k: getattr(stats, k) for k in ("size_bytes", "lines", "disk_errors", "needle", "needle_line")
        }
        fd, tmp_truth = tempfile.mkstemp(prefix=".truth-", dir=where)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(facts, f)
        os.replace(tmp_truth, truth)
        os.replace(tmp, log)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    stats.path = log
    return stats


def _cached_truth(log: Path, truth: Path) -> Any:
    """The stats of a log made before, or None when it is missing or does not match them."""
    import json

    from rlm_sandbox.testing.logs import LogStats

    try:
        facts = json.loads(truth.read_text(encoding="utf-8"))
        stats = LogStats(path=log, **{k: facts[k] for k in ("size_bytes", "lines", "disk_errors", "needle")})
        stats.needle_line = facts.get("needle_line")
        if log.stat().st_size != stats.size_bytes or not isinstance(stats.disk_errors, int):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stats
