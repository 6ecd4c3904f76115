"""Run the adversarial suite under each runtime and print what every attack achieved.

Usage: uv run python scripts/security_report.py [--runtime runc,runsc]

Each row: the surface attacked (the container itself, or the host around it: output schemas,
memory floods, project files, the terminal, orphans, faults, inputs), the attack, the
runtime, the run's status, how it was contained (the error or the cell's last line), seconds
to contain, and whether a planted host secret leaked. Attacks on the terminal (escape
sequences and markup from models, cells, kernels and traces) also say what reached the
terminal; attacks on the host's memory (floods of forged requests) give the peak resident
memory of the run's process. A summary per surface and runtime follows.
Exit status 1 if any test failed or anything leaked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def print_by_surface(rows: list[dict]) -> None:
    """One line per attacked surface and runtime: runs, breaches, the slowest containment."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("surface", "host"), r["runtime"]), []).append(r)
    print(f"\n{'surface':<12}  {'runtime':<7}  {'runs':>4}  {'breaches':>8}  {'slowest s':>9}")
    for (surface, runtime), group in sorted(groups.items()):
        print(
            f"{surface:<12}  {runtime:<7}  {len(group):>4}  {sum(r['breached'] for r in group):>8}  "
            f"{max(r['seconds'] for r in group):>9.1f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", default="runc,runsc", help="comma-separated: runc, runsc")
    args = ap.parse_args()
    rows, failed = [], False
    for runtime in args.runtime.split(","):
        report = Path(tempfile.mkstemp(suffix=".json")[1])
        env = {**os.environ, "RLM_SANDBOX_TEST_RUNTIME": runtime, "RLM_SANDBOX_SECURITY_REPORT": str(report)}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "tests/adversarial"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"[{runtime}] pytest: {summary}")
        failed |= proc.returncode != 0
        if report.exists() and report.stat().st_size:
            rows += json.loads(report.read_text())["rows"]
    rows.sort(key=lambda r: (r.get("surface", "host") == "container", r.get("surface", "host"), r["attack"]))
    width = max((len(r["attack"]) for r in rows), default=10)
    print(
        f"\n{'surface':<12}  {'attack':<{width}}  {'runtime':<7}  {'status':<16}  {'secs':>5}  {'peak MB':>7}  "
        "breached  contained by"
    )
    for r in rows:
        peak = r.get("peak_rss_mb")
        print(
            f"{r.get('surface', 'host'):<12}  {r['attack']:<{width}}  {r['runtime']:<7}  {r['status']:<16}  "
            f"{r['seconds']:>5.1f}  {'' if peak is None else peak:>7}  {'YES' if r['breached'] else 'no':<8}  "
            f"{r['outcome'][:90]}"
        )
    print_by_surface(rows)
    terminal = [r for r in rows if "terminal" in r]
    if terminal:
        print(f"\nwhat reached the terminal ({len(terminal)} runs on a pseudo-terminal or a pipe):")
        for r in terminal:
            print(f"  {r['attack']:<{width}}  {r['runtime']:<7}  {r['terminal']}")
    breaches = sum(r["breached"] for r in rows)
    slowest = max((r["seconds"] for r in rows), default=0.0)
    peaks = [r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb") is not None]
    print(
        f"\n{len(rows)} attack runs, {breaches} breaches, slowest contained in {slowest:.1f} s"
        + (f", host peak under a flood {max(peaks)} MB" if peaks else "")
        + ("; SOME TESTS FAILED" if failed else "; all checks passed")
    )
    return 1 if failed or breaches else 0


if __name__ == "__main__":
    sys.exit(main())
