"""Whole-engine benchmark: the real CLI, real containers, the real LiteLLM HTTP path.

A scripted model is served from this process on 127.0.0.1 (so the measured CLI process
holds only the engine); inputs are generated deterministically. For each row it prints the
median over runs of: wall time of the whole ``rlm-sandbox run`` process, the run's own
``wall_s``, LM calls, containers, host peak RSS (of the CLI process, from wait4), time to
the first model call and to the first cell, per-cell overhead (host round trip minus the
cell's own time: median and p95), and container start (cold, and from the warm pool).

Usage: uv run python scripts/bench.py [--quick] [--runs 3] [--rows needle-1,count-100,...]
       [--latency 0] [--engine URL[,max=N] ...] [--json bench-results.json]

Rows with depth 1 use a model that filters ``context`` with code before fanning out (what
capable models do on needle and counting tasks); depth 2/3 rows use one that chunks the
whole input and recurses, so the recursion tree is really built. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlm_sandbox.testing import (  # noqa: E402
    ScriptedModelServer,
    answer_leaf,
    generate_log,
    grep_first_policy,
    rlm_policy,
)

SEARCH = "What is the secret code?"
COUNT = 'How many lines contain "ERROR disk"?'
MB = 1_000_000


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


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, int, int, str, str]:
    """(wall seconds, exit code, peak RSS in MB, stdout, stderr) of one CLI process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlm_sandbox.cli", *args], stdout=out, stderr=err, env=env, cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return wall, proc.returncode, usage.ru_maxrss // 1024, out.read().decode(), err.read().decode()


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rows", default=None, help="comma-separated row names (default: all but the 1 GB rows with --quick)"
    )
    ap.add_argument("--quick", action="store_true", help="skip the 1 GB rows")
    ap.add_argument("--runs", type=int, default=3)
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
    ap.add_argument("--json", dest="json_path", default="bench-results.json")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "rlm-bench"))
    args = ap.parse_args()

    names = args.rows.split(",") if args.rows else (QUICK if args.quick else list(ROWS))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "rlm_sandbox.cli", "image", "build"], check=True, capture_output=True, cwd=ROOT
    )
    results = []
    for name in names:
        row = ROWS[name]
        stats = generate_log(work / f"log-{row['size']}.txt", row["size"], seed=42)
        truth = str(stats.disk_errors) if row["task"] == COUNT else "QX-4417"
        if row["policy"] == "fanout":
            policy, truth = fanout_policy(row["n"], row["leaf_latency"]), "256"
        else:
            policy = grep_first_policy if row["policy"] == "grep" else rlm_policy
        runs = 1 if row["size"] >= 1000 * MB else args.runs
        samples = []
        with ScriptedModelServer(policy, latency_s=args.latency) as server:
            env = {**os.environ, "OPENAI_API_KEY": server.api_key}
            for i in range(runs):
                trace = work / f"trace-{name}-{i}.jsonl"
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
                wall, code, rss, out, err = run_cli(cli_args, env)
                try:
                    res = json.loads(out)
                except ValueError:
                    res = {"status": f"exit {code}", "error": err[-500:]}
                fig = trace_figures(trace) if trace.exists() else {}
                samples.append({"wall_e2e_s": wall, "rss_mb": rss, **res, **fig})
                print(
                    f"  {name} run {i + 1}: {wall:.2f} s, status {res.get('status')}, answer {res.get('answer')!r} "
                    f"(truth {truth}), rss {rss} MB",
                    file=sys.stderr,
                )
        summary = {
            "row": name,
            "size_mb": row["size"] / MB,
            "depth": row["depth"],
            "runs": runs,
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
                    "first_lm_call_s",
                    "first_cell_s",
                    "cell_overhead_median_ms",
                    "cell_overhead_p95_ms",
                    "start_cold_s",
                    "start_pool_ms",
                )
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
    Path(args.json_path).write_text(
        json.dumps({"latency_s": args.latency, "engines": args.engines, "rows": results}, indent=2)
    )
    print(f"(medians over runs; JSON written to {args.json_path})")


if __name__ == "__main__":
    main()
