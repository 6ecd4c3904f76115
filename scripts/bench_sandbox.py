"""Sandbox figures: context load time, trivial-cell latency and cold start, at 1/10/100 MB.

Reports, never asserts. Usage: uv run python scripts/bench_sandbox.py [--runs 20] [--runtime runsc]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from rlm_sandbox import Sandbox, SandboxConfig


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--sizes", default="1,10,100", help="MB, comma-separated")
    ap.add_argument("--runtime", default=None)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()
    cfg = SandboxConfig(runtime=args.runtime, memory="2g", run_id="bench-sandbox")

    # Warm the image check and the engine's caches once.
    with Sandbox(cfg) as sb:
        sb.execute("pass")
    starts = []
    for _ in range(10):
        t0 = time.perf_counter()
        sb = Sandbox(cfg).start()
        starts.append(time.perf_counter() - t0)
        sb.close()

    rows = []
    line = "2026-11-25T06:00:00Z INFO svc=api req=%08d status=200 latency_ms=12 path=/v1/items\n"
    for mb in (int(x) for x in args.sizes.split(",")):
        n = mb * 1_000_000 // len(line % 0) + 1
        text = "".join(line % i for i in range(n))[: mb * 1_000_000]
        with Sandbox(cfg) as sb:
            t0 = time.perf_counter()
            sb.load_context(text)
            load = time.perf_counter() - t0
            sb.execute("pass")
            cells = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                r = sb.execute("x = 1")
                cells.append(time.perf_counter() - t0)
                assert r.ok
        rows.append(
            {
                "size_mb": mb,
                "load_s": load,
                "cell_median_ms": statistics.median(cells) * 1e3,
                "cell_p95_ms": pct(cells, 0.95) * 1e3,
            }
        )
        del text

    print(f"runtime: {args.runtime or 'default (runc)'}")
    print(
        f"cold start of a hardened container (create+attach+start+kernel ready): "
        f"median {statistics.median(starts):.3f} s, p95 {pct(starts, 0.95):.3f} s, min {min(starts):.3f} s"
    )
    print(f"{'size':>8} {'load s':>8} {'cell median ms':>15} {'cell p95 ms':>12}")
    for r in rows:
        print(
            f"{r['size_mb']:>6}MB {r['load_s']:>8.3f} {r['cell_median_ms']:>15.2f} {r['cell_p95_ms']:>12.2f}"
        )
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"cold_start_s": statistics.median(starts), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
