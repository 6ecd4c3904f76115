"""Whole-engine benchmark: the real CLI, real containers, the real model HTTP path; and, side by
side, the same workloads through the official ``rlms`` engine when it is installed.

A scripted model is served from this process on 127.0.0.1 (so a measured engine process holds
only the engine); inputs are generated deterministically and their answers are known
(``generate_log``), so every run is checked. For each row it prints the median over runs of:
wall time of the whole ``rlm-sandbox run`` process, the run's own ``wall_s``, LM calls,
containers, host peak RSS (of the CLI process, from wait4), time to the first model call and
to the first cell (inside the run, from its trace), per-cell overhead (host round trip minus
the cell's own time: median and p95), and container start (cold, and from the warm pool).

Usage: uv run python scripts/bench.py [--quick] [--runs 3] [--rows needle-1,count-100,...]
       [--latency 0] [--engine URL[,max=N] ...] [--json bench-results.json]
       [--compare] [--rlms-python PATH] [--no-rlms] [--scale F]

Rows with depth 1 use a model that filters ``context`` with code before fanning out (what
capable models do on needle and counting tasks); depth 2/3 rows use one that chunks the
whole input and recurses, so the recursion tree is really built. Reports, never asserts.

The official engine (rlms, Zhang, Kraska & Khattab's reference implementation)
-------------------------------------------------------------------------------
Install it in its own virtual environment, outside the project (never a dependency of ours),
with compiled bytecode as scripts/setup.sh leaves ours, and build its Docker REPL image
(python3, requests and dill from Debian's packages, on our offline base; once):

    uv venv .rlms-venv && uv pip install --python .rlms-venv --compile-bytecode rlms
    bash images/rlms/build.sh                       # rlms-repl:bookworm (the bench builds it too)
    uv run python scripts/bench.py --compare --rlms-python .rlms-venv/bin/python

The bench finds rlms' Python from ``--rlms-python``, else ``$RLM_BENCH_RLMS_PYTHON``, else
``./.rlms-venv/bin/python`` if it exists; without one the table says rlms is absent. Each rlms
run is one process of that Python running scripts/rlms_driver.py, which builds rlms' ``RLM``
with the ``openai`` backend at the scripted server's URL (same model name), its Docker
environment, ``max_depth`` = the row's depth, and prints its answer. Runs alternate between
the engines (ours, rlms, ours, ...) so a noisy machine hurts both alike, and each run starts
from a settled machine (``settle``: dirty pages flushed, then a 1 s pause), so that neither
pays for the writeback the other left. rlms' containers run
with ``--network host`` and reach its host proxy over 127.0.0.1 (``--rlms-network bridge``
keeps rlms' own default, Docker's bridge, where that bridge exists).

The scripted model speaks each engine's protocol with the same code: the first turn is the
same split/filter/fan-out cell (rlm_sandbox.testing.build_step1_code); the second turn ends
the run: ``FINAL_VAR(answer)`` for us, a cell setting ``answer["content"]`` and
``answer["ready"] = True`` for rlms (its only way to submit). At depth 2 the rlms root calls
``rlm_query_batched`` (rlms' recursive call; its ``llm_query`` is never recursive), ours
``llm_query_batched`` (recursive while depth allows). Leaves answer from the text they get.
rlms runs rows of depth 1 and 2 with the grep/chunk models; fan-out and depth-3 rows show
``n/a``.

The comparison table (--compare: needle-1, needle-100, count-100, needle-10-depth2)
---------------------------------------------------------------------------------
One line per row and engine, min / median / max over ``--runs`` runs:

- ``MB``: the row's input size (after ``--scale``).
- ``ok``: runs whose answer was exactly the known truth.
- ``reqs``: model requests the scripted server received during a run (median): both engines
  should do the same work (root turns, child turns at depth 2, leaf calls).
- ``whole process s``: from spawning the engine's process to its exit (ours: ``python -m
  rlm_sandbox.cli run ...``; rlms: its venv's python running the driver): imports, container
  start, input load, every model call and cell, teardown.
- ``1st request s``: from that spawn to the arrival of the engine's first model request at
  the scripted server (its clock, in this process: ``RequestLog.first_after``).
- ``RSS MB``: host peak RSS from wait4: the largest peak among the engine process and every
  descendant it waited for (docker CLI calls included). Container memory is not host memory
  and is not counted, for either engine.
- ``rlms / ours``: on the rlms line, rlms' median over ours for whole process, first
  request and RSS (above 1: we are that many times faster, or smaller).

``--scale F`` multiplies every row's input size (e.g. ``--scale 0.01 --runs 1`` checks the
harness end to end in a minute); figures to publish come from the full sizes on a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlm_sandbox.testing import (  # noqa: E402
    ScriptedModelServer,
    answer_leaf,
    build_step1_code,
    generate_log,
    grep_first_policy,
    messages_of,
    rlm_policy,
)

SEARCH = "What is the secret code?"
COUNT = 'How many lines contain "ERROR disk"?'
MB = 1_000_000
RLMS_IMAGE = "rlms-repl:bookworm"
RLMS_DRIVER = ROOT / "scripts" / "rlms_driver.py"
RLMS_PYTHON_ENV = "RLM_BENCH_RLMS_PYTHON"
PROCESS_TIMEOUT_S = 1500.0
"""A run that takes longer is killed (its process group) and reported as failed."""


def fanout_policy(n: int, leaf_latency: float):
    """A root whose one cell asks ``n`` questions at once; each leaf answer takes ``leaf_latency``.

    At depth 2 each question is a child RLM node (its own container): it runs one cell and
    answers with ``FINAL_VAR``, each of its two model calls taking ``leaf_latency``.
    """

    def policy(request: dict[str, Any]) -> str:
        msgs = request.get("messages") or []
        node = msgs and msgs[0].get("role") == "system" and "```repl" in str(msgs[0].get("content"))
        if node and "depth 0 of" not in str(msgs[0].get("content")):
            time.sleep(leaf_latency)
            steps = sum(m.get("role") == "assistant" for m in msgs)
            return "```repl\nn = 1\nprint(n)\n```" if steps == 0 else "FINAL_VAR(n)"
        if node:
            if sum(m.get("role") == "assistant" for m in msgs) == 0:
                return (
                    "```repl\n"
                    f"answers = llm_query_batched([f'TASK: How many lines contain \"x\"?\\n\\nTEXT:\\nx {{i}}' for i in range({n})])\n"
                    "answer = str(sum(int(a) for a in answers))\nprint(answer)\n```"
                )
            return "FINAL_VAR(answer)"
        time.sleep(leaf_latency)
        return answer_leaf(str(msgs[-1].get("content")) if msgs else "")

    return policy


ROWS: dict[str, dict[str, Any]] = {
    **{
        f"needle-{s}": {"size": s * MB, "task": SEARCH, "depth": 1, "policy": "grep"}
        for s in (1, 10, 100, 1000)
    },
    **{
        f"count-{s}": {"size": s * MB, "task": COUNT, "depth": 1, "policy": "grep"}
        for s in (1, 10, 100, 1000)
    },
    "needle-10-depth2": {"size": 10 * MB, "task": SEARCH, "depth": 2, "policy": "chunk"},
    "needle-10-depth3": {
        "size": 10 * MB,
        "task": SEARCH,
        "depth": 3,
        "policy": "chunk",
        "extra": ["--max-containers", "32"],
    },
    "fanout-256-depth2": {
        "size": 1000,
        "task": COUNT,
        "depth": 2,
        "policy": "fanout",
        "n": 256,
        "leaf_latency": 1.0,
        "extra": ["--max-concurrency", "32", "--max-containers", "33", "--max-lm-calls", "1000"],
    },
    "fanout-256": {
        "size": 1000,
        "task": COUNT,
        "depth": 1,
        "policy": "fanout",
        "n": 256,
        "leaf_latency": 1.0,
        "extra": ["--max-concurrency", "32"],
    },
}
QUICK = [
    "needle-1",
    "count-1",
    "needle-10",
    "count-10",
    "needle-100",
    "count-100",
    "needle-10-depth2",
    "needle-10-depth3",
    "fanout-256",
]
COMPARE = ["needle-1", "needle-100", "count-100", "needle-10-depth2"]
"""The workloads of issue 16's table: whole process and first model request, both engines."""


# --------------------------------------------------------------------------- the scripted model

_RLMS_MARK = 'answer["ready"] = True'
"""rlms' system prompt teaches this submission protocol; ours does not mention it."""
_RLMS_TASK_RE = re.compile(r"^Answer the following: (.+)$", re.MULTILINE)
_LEAF_FANOUT = "answers = llm_query_batched(prompts)"


def rlms_node_reply(request: dict[str, Any], *, grep_first: bool, depth: int) -> str | None:
    """The scripted model's turn in an rlms RLM node, or None when ``request`` is not one.

    Turn 1 is the very cell our scripted model writes (build_step1_code), so both engines run
    the same code on the same data; it keeps its result as ``final_answer`` because rlms
    resets a non-dict ``answer`` between cells. Turn 2 submits it the only way rlms accepts.
    The root (rlms names the task only to the root: "Answer the following: ...") recurses
    with ``rlm_query_batched`` when depth >= 2; a child's task travels inside its context.
    """
    messages = messages_of(request)
    if not messages or messages[0]["role"] != "system" or _RLMS_MARK not in messages[0]["content"]:
        return None
    if any(m["role"] == "assistant" for m in messages):
        return (
            "The answer is in `final_answer`; submitting it.\n\n"
            '```repl\nanswer["content"] = final_answer\nanswer["ready"] = True\n```\n'
        )
    users = [m["content"] for m in messages if m["role"] == "user"]
    match = _RLMS_TASK_RE.search(users[0]) if users else None
    code = build_step1_code(match.group(1).strip() if match else "", grep_first=grep_first)
    if match and depth >= 2:
        if _LEAF_FANOUT not in code:
            raise RuntimeError("build_step1_code changed: cannot make the rlms root recurse")
        code = code.replace(_LEAF_FANOUT, "answers = rlm_query_batched(prompts)")
    return (
        "The input is too large to read at once, so I will split `context` into pieces, "
        "ask a sub-model about each piece in parallel, and combine the answers.\n\n"
        f"```repl\n{code}final_answer = answer\n```\n"
    )


def row_policy(row: dict[str, Any]) -> tuple[Callable[[dict[str, Any]], Any], bool]:
    """(the scripted model for ``row``, whether rlms can run it)."""
    if row["policy"] == "fanout":
        return fanout_policy(row["n"], row["leaf_latency"]), False
    grep_first = row["policy"] == "grep"
    ours = grep_first_policy if grep_first else rlm_policy

    def policy(request: dict[str, Any]) -> Any:
        reply = rlms_node_reply(request, grep_first=grep_first, depth=row["depth"])
        return ours(request) if reply is None else reply

    return policy, row["depth"] <= 2


# --------------------------------------------------------------------------- processes


def run_process(
    argv: list[str], env: dict[str, str], cwd: Path, server: ScriptedModelServer, timeout: float
) -> dict[str, Any]:
    """Spawn ``argv`` as one engine run and measure it from outside.

    wall: spawn to exit; first_request_s: spawn to the first model request that reached
    ``server`` after the spawn; requests: model requests the server got meanwhile (runs are
    sequential); rss_mb: wait4's ru_maxrss (the largest peak of the process and the
    descendants it waited for). Past ``timeout`` its process group is killed.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        count0 = server.requests.count
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        first = server.requests.first_after(t0)
        out.seek(0)
        err.seek(0)
        return {
            "wall_e2e_s": wall,
            "exit": proc.returncode,
            "timed_out": timed_out.is_set(),
            "rss_mb": usage.ru_maxrss // 1024,
            "first_request_s": None if first is None else first - t0,
            "requests": server.requests.count - count0,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


SETTLE_S = 1.0


def settle() -> None:
    """Start each measured run, of either engine, from a quiet machine: the dirty pages a run
    left (rlms writes its context and a state file per cell to its workspace) are flushed
    first, so their writeback does not land in the next run's time, then a pause."""
    os.sync()
    time.sleep(SETTLE_S)


def run_cli(args: list[str], env: dict[str, str], server: ScriptedModelServer) -> dict[str, Any]:
    """One ``rlm-sandbox run`` process (the real CLI in a child process)."""
    return run_process([sys.executable, "-m", "rlm_sandbox.cli", *args], env, ROOT, server, PROCESS_TIMEOUT_S)


class Rlms:
    """The official engine, when installed: its Python, its image, its leftover containers."""

    def __init__(self, python: str | None, image: str, network: str, work: Path) -> None:
        self.python, self.image, self.network, self.work = python, image, network, work
        self.label = f"rlm-bench.run={uuid.uuid4().hex[:12]}"
        self.version: str | None = None
        self.absent: str | None = None

    @staticmethod
    def find_python(flag: str | None) -> str | None:
        if flag:
            return flag
        if os.environ.get(RLMS_PYTHON_ENV):
            return os.environ[RLMS_PYTHON_ENV]
        default = ROOT / ".rlms-venv" / "bin" / "python"
        return str(default) if default.exists() else None

    def prepare(self) -> None:
        """Check that rlms imports from its Python and that its image exists (build ours once)."""
        if not self.python:
            self.absent = f"not installed (give --rlms-python PATH or ${RLMS_PYTHON_ENV}; see --help)"
            return
        try:
            probe = subprocess.run(
                [self.python, "-c", "import importlib.metadata as m, rlm; print(m.version('rlms'))"],
                capture_output=True,
                text=True,
            )
        except OSError as exc:
            self.absent = f"cannot run {self.python}: {exc.strerror}"
            return
        if probe.returncode != 0:
            tail = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or ["?"]
            self.absent = f"not importable from {self.python}: {tail[0]}"
            return
        self.version = probe.stdout.strip()
        if subprocess.run(["docker", "image", "inspect", self.image], capture_output=True).returncode:
            if self.image != RLMS_IMAGE:
                self.absent = f"image {self.image} is missing"
                return
            print(f"building {RLMS_IMAGE} for rlms (images/rlms/build.sh, once)", file=sys.stderr)
            build = subprocess.run(["bash", str(ROOT / "images" / "rlms" / "build.sh"), RLMS_IMAGE])
            if build.returncode != 0:
                self.absent = f"building {RLMS_IMAGE} failed (images/rlms/build.sh)"

    def run(self, row: dict[str, Any], path: Path, server: ScriptedModelServer) -> dict[str, Any]:
        assert self.python is not None
        argv = [
            self.python,
            str(RLMS_DRIVER),
            "--base-url",
            server.url,
            "--model",
            server.served_name,
            "--api-key",
            server.api_key,
            "--task",
            row["task"],
            "-i",
            str(path),
            "--depth",
            str(row["depth"]),
            "--image",
            self.image,
            "--network",
            self.network,
            "--label",
            self.label,
        ]
        workspace = self.work / "rlms-workspace"
        workspace.mkdir(exist_ok=True)
        env = {**os.environ, "OPENAI_API_KEY": server.api_key, "RLM_DOCKER_WORKSPACE_DIR": str(workspace)}
        sample = run_process(argv, env, self.work, server, PROCESS_TIMEOUT_S)
        self.remove_leftovers()
        lines = sample["stdout"].strip().splitlines()
        try:
            res = json.loads(lines[-1]) if lines else {}
        except ValueError:
            res = {}
        if not res:
            res = {"error": f"exit {sample['exit']}: " + sample["stderr"][-500:]}
        sample.update(answer=res.get("answer"), error=res.get("error"), driver=res)
        return sample

    def remove_leftovers(self) -> None:
        """Containers of this bench's rlms runs that rlms did not remove (a killed run): only ours."""
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={self.label}"], capture_output=True, text=True
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def trace_figures(path: Path) -> dict[str, Any]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cells = [e for e in events if e["event"] == "cell"]
    overhead = sorted((e["wall_s"] - e["duration_s"]) * 1000 for e in cells)
    starts = [e for e in events if e["event"] == "node_start"]
    cold = [e["start_s"] for e in starts if not e.get("pooled")]
    pooled = [e["start_s"] for e in starts if e.get("pooled")]
    end = events[-1] if events and events[-1]["event"] == "run_end" else {}
    return {
        "cell_overhead_median_ms": statistics.median(overhead) if overhead else None,
        "cell_overhead_p95_ms": overhead[min(len(overhead) - 1, int(0.95 * (len(overhead) - 1) + 0.5))]
        if overhead
        else None,
        "start_cold_s": statistics.median(cold) if cold else None,
        "start_pool_ms": statistics.median(pooled) * 1000 if pooled else None,
        "first_lm_call_s": (end.get("timings") or {}).get("first_lm_call_s"),
        "first_cell_s": (end.get("timings") or {}).get("first_cell_s"),
    }


def med(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def spread(values: list[Any]) -> tuple[Any, Any, Any] | None:
    vals = sorted(v for v in values if v is not None)
    return (vals[0], statistics.median(vals), vals[-1]) if vals else None


def compared(samples: list[dict[str, Any]], truth: str) -> dict[str, Any]:
    """min/med/max of the runs that answered right (a failed run's time means nothing), and
    the first failure, so the table can say why."""
    good = [s for s in samples if s.get("answer") == truth]
    bad = [s for s in samples if s.get("answer") != truth]
    first_error = None
    if bad:
        b = bad[0]
        why = str(b.get("error") or f"answer {b.get('answer')!r}, status {b.get('status')}")
        first_error = " ".join(why.split())[:300]
    return {
        "ok": len(good),
        "first_error": first_error,
        **{
            k: spread([s.get(k) for s in good])
            for k in ("wall_e2e_s", "first_request_s", "rss_mb", "requests")
        },
    }


def fmt_spread(s: tuple[float, float, float] | None, fmt: str) -> str:
    return "-" if s is None else " / ".join(fmt.format(v) for v in s)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("The official engine") :],
    )
    ap.add_argument(
        "--rows", default=None, help="comma-separated row names (default: all but the 1 GB rows with --quick)"
    )
    ap.add_argument("--quick", action="store_true", help="skip the 1 GB rows")
    ap.add_argument(
        "--compare", action="store_true", help=f"the rows of the engine comparison: {','.join(COMPARE)}"
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per row and engine (1 GB rows: 1)")
    ap.add_argument(
        "--latency", type=float, default=0.0, help="simulated model latency for every call, seconds"
    )
    ap.add_argument(
        "--engine",
        dest="engines",
        action="append",
        default=[],
        help="pass --engine URL[,max=N] to every run (repeat for several engines)",
    )
    ap.add_argument(
        "--scale", type=float, default=1.0, help="multiply every row's input size (small: checks the harness)"
    )
    ap.add_argument(
        "--rlms-python",
        default=None,
        help=f"python of a venv with rlms installed (else ${RLMS_PYTHON_ENV}, else ./.rlms-venv/bin/python)",
    )
    ap.add_argument("--no-rlms", action="store_true", help="run our engine only")
    ap.add_argument("--rlms-image", default=RLMS_IMAGE, help="rlms' DockerREPL image (built if the default)")
    ap.add_argument(
        "--rlms-network",
        choices=("host", "bridge"),
        default="host",
        help="rlms containers: host network + proxy over 127.0.0.1 (default), or rlms' own bridge",
    )
    ap.add_argument("--json", dest="json_path", default="bench-results.json")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "rlm-bench"))
    args = ap.parse_args()

    if args.rows:
        names = args.rows.split(",")
    elif args.compare:
        names = list(COMPARE)
    else:
        names = QUICK if args.quick else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "rlm_sandbox.cli", "image", "build"], check=True, capture_output=True, cwd=ROOT
    )
    rlms: Rlms | None = None
    if not args.no_rlms:
        rlms = Rlms(Rlms.find_python(args.rlms_python), args.rlms_image, args.rlms_network, work)
        rlms.prepare()
        if rlms.absent:
            print(f"rlms: {rlms.absent}", file=sys.stderr)
    results = []
    for name in names:
        row = ROWS[name]
        size = max(1000, int(row["size"] * args.scale))
        stats = generate_log(work / f"log-{size}.txt", size, seed=42)
        assert stats.path is not None and stats.needle is not None
        truth = str(stats.disk_errors) if row["task"] == COUNT else stats.needle.rsplit(" ", 1)[-1]
        policy, rlms_can = row_policy(row)
        if row["policy"] == "fanout":
            truth = str(row["n"])
        runs = 1 if row["size"] >= 1000 * MB else args.runs
        if rlms is None:
            rlms_note = "not run (--no-rlms)"
        elif rlms.absent:
            rlms_note = f"absent: {rlms.absent}"
        elif not rlms_can:
            rlms_note = "n/a: the scripted model drives rlms at depth 1-2 with the grep/chunk models only"
        elif row["size"] >= 1000 * MB:
            rlms_note = "n/a: 1 GB rows are ours only"
        else:
            rlms_note = None
        samples, rlms_samples = [], []
        with ScriptedModelServer(policy, latency_s=args.latency) as server:
            env = {**os.environ, "OPENAI_API_KEY": server.api_key}
            for i in range(runs):
                trace = work / f"trace-{name}-{i}.jsonl"
                trace.unlink(missing_ok=True)
                memory = "6g" if row["size"] >= 1000 * MB else "2g"
                cli_args = [
                    "run",
                    "--model",
                    server.model_name,
                    "--api-base",
                    server.url,
                    "--task",
                    row["task"],
                    "-i",
                    str(stats.path),
                    "--depth",
                    str(row["depth"]),
                    "--json",
                    "--trace",
                    str(trace),
                    "--memory",
                    memory,
                    "--timeout",
                    "1200",
                    *row.get("extra", []),
                    *[a for url in args.engines for a in ("--engine", url)],
                ]
                settle()
                run = run_cli(cli_args, env, server)
                try:
                    res = json.loads(run["stdout"])
                except ValueError:
                    res = {"status": f"exit {run['exit']}", "error": run["stderr"][-500:]}
                fig = trace_figures(trace) if trace.exists() else {}
                sample = {k: run[k] for k in ("wall_e2e_s", "rss_mb", "first_request_s", "requests")}
                samples.append({**sample, **res, **fig})
                print(
                    f"  {name} run {i + 1}: {run['wall_e2e_s']:.2f} s, status {res.get('status')}, "
                    f"answer {res.get('answer')!r} (truth {truth}), rss {run['rss_mb']} MB, "
                    f"first request {run['first_request_s'] if run['first_request_s'] is None else round(run['first_request_s'], 2)} s",
                    file=sys.stderr,
                )
                if rlms is not None and rlms_note is None:
                    settle()
                    r = rlms.run(row, stats.path, server)
                    rlms_samples.append(
                        {
                            k: r[k]
                            for k in (
                                "wall_e2e_s",
                                "rss_mb",
                                "first_request_s",
                                "requests",
                                "answer",
                                "error",
                                "exit",
                            )
                        }
                        | {"driver": r["driver"]}
                    )
                    print(
                        f"  {name} rlms run {i + 1}: {r['wall_e2e_s']:.2f} s, answer {r['answer']!r} "
                        f"(truth {truth}), rss {r['rss_mb']} MB, first request "
                        f"{r['first_request_s'] if r['first_request_s'] is None else round(r['first_request_s'], 2)} s"
                        + (f", error {r['error']}" if r["error"] else ""),
                        file=sys.stderr,
                    )
        summary = {
            "row": name,
            "size_mb": size / MB,
            "depth": row["depth"],
            "runs": runs,
            "truth": truth,
            "correct": all(s.get("answer") == truth for s in samples),
            **{
                k: med([s.get(k) for s in samples])
                for k in (
                    "wall_e2e_s",
                    "wall_s",
                    "lm_calls",
                    "containers",
                    "nodes",
                    "rss_mb",
                    "first_request_s",
                    "first_lm_call_s",
                    "first_cell_s",
                    "cell_overhead_median_ms",
                    "cell_overhead_p95_ms",
                    "start_cold_s",
                    "start_pool_ms",
                )
            },
            "compare": {
                "ours": compared(samples, truth),
                "rlms": {"note": rlms_note}
                if rlms_note
                else compared(rlms_samples, truth) | {"samples": rlms_samples},
            },
        }
        results.append(summary)

    cols = [
        ("row", "{:<17}"),
        ("correct", "{!s:<7}"),
        ("wall_e2e_s", "{:>7.2f}"),
        ("wall_s", "{:>7.2f}"),
        ("lm_calls", "{:>5.0f}"),
        ("containers", "{:>4.0f}"),
        ("rss_mb", "{:>6.0f}"),
        ("first_lm_call_s", "{:>6.2f}"),
        ("first_cell_s", "{:>6.2f}"),
        ("cell_overhead_median_ms", "{:>6.2f}"),
        ("cell_overhead_p95_ms", "{:>6.2f}"),
        ("start_cold_s", "{:>6.3f}"),
        ("start_pool_ms", "{:>6.2f}"),
    ]
    heads = [
        "row",
        "ok",
        "e2e s",
        "run s",
        "LM",
        "ctr",
        "RSS MB",
        "1st LM",
        "1st cell",
        "cell ms",
        "p95 ms",
        "cold s",
        "pool ms",
    ]
    print("  ".join(heads))
    for r in results:
        print("  ".join("-" if r.get(k) is None else f.format(r[k]) for k, f in cols))
    print(f"(rlm-sandbox alone, medians over runs; scale {args.scale:g})")
    print()
    print_comparison(results, rlms, args)
    Path(args.json_path).write_text(
        json.dumps(
            {
                "latency_s": args.latency,
                "engines": args.engines,
                "scale": args.scale,
                "rlms": None
                if rlms is None
                else {
                    "python": rlms.python,
                    "version": rlms.version,
                    "absent": rlms.absent,
                    "image": rlms.image,
                    "network": rlms.network,
                },
                "rows": results,
            },
            indent=2,
        )
    )
    print(f"(JSON written to {args.json_path})")


def print_comparison(results: list[dict[str, Any]], rlms: Rlms | None, args: argparse.Namespace) -> None:
    """One table: each row's workload through both engines, min / median / max over runs."""
    w = max([16] + [len(r["row"]) for r in results])
    print(
        f"{'workload':<{w}}  {'MB':>7}  {'engine':<11}  {'ok':>5}  {'reqs':>4}  {'whole process s':>21}  "
        f"{'1st request s':>21}  {'host RSS MB':>15}  rlms / ours (medians)"
    )
    print(
        f"{'':<{w}}  {'':>7}  {'':<11}  {'':>5}  {'':>4}  {'min / med / max':>21}  {'min / med / max':>21}  {'min/med/max':>15}"
    )

    def line(r: dict[str, Any], engine: str, c: dict[str, Any]) -> str:
        reqs = "-" if c["requests"] is None else f"{c['requests'][1]:.0f}"
        return (
            f"{engine:<11}  {c['ok']:>2}/{r['runs']:<2}  {reqs:>4}  {fmt_spread(c['wall_e2e_s'], '{:.2f}'):>21}  "
            f"{fmt_spread(c['first_request_s'], '{:.2f}'):>21}  {fmt_spread(c['rss_mb'], '{:.0f}'):>15}"
        )

    for r in results:
        ours, theirs = r["compare"]["ours"], r["compare"]["rlms"]
        print(f"{r['row']:<{w}}  {r['size_mb']:>7g}  " + line(r, "rlm-sandbox", ours))
        pad = f"{'':<{w}}  {'':>7}  "
        if "note" in theirs:
            print(pad + f"{'rlms':<11}  {theirs['note']}")
        else:
            ratios = []
            for key, what in (("wall_e2e_s", "whole"), ("first_request_s", "1st request"), ("rss_mb", "RSS")):
                a, b = ours[key], theirs[key]
                ratios.append(f"{what} {'-' if not a or not b or not a[1] else f'{b[1] / a[1]:.1f}x'}")
            print(pad + line(r, "rlms", theirs) + "  " + ", ".join(ratios))
        for engine, c in (("rlm-sandbox", ours), ("rlms", theirs)):
            if c.get("first_error"):
                failed = r["runs"] - c["ok"]
                print(pad + f"{'':<11}  ({engine}: {failed} run(s) failed; first: {c['first_error']})")
    if rlms is not None and not rlms.absent:
        print(
            f"(rlms {rlms.version} from {rlms.python}, image {rlms.image}, network {rlms.network}; "
            f"same scripted server, latency {args.latency:g} s; runs alternate between the engines)"
        )


if __name__ == "__main__":
    main()
