"""Run one task through the official ``rlms`` engine (``from rlm import RLM``), for scripts/bench.py.

This file is run by the Python of the virtual environment where ``rlms`` is installed (never
ours: rlms is not a dependency of rlm-sandbox), as one whole process per run, so the bench
measures it the way it measures our CLI: wall time of the process, host peak RSS (wait4),
and, at the scripted model server, when the first model request arrived.

It builds rlms' ``RLM`` the way its README shows: the ``openai`` backend pointed at the
scripted server (``base_url``), its Docker environment (``DockerREPL``) with an image that has
python, requests and dill (images/rlms/build.sh), ``max_depth`` = our ``--depth`` (rlms'
``rlm_query`` starts a child RLM with its own container while the child's depth is below
``max_depth``; ``llm_query`` is always a plain call). The input file is read as text and given
as the completion's ``prompt`` (rlms' ``context``); the task is the ``root_prompt``.

Two changes to how rlms starts its containers, both on its ``docker run`` command line and
nothing else (rlms' code is used as installed):

- a label ``rlm-bench.run=<id>``, so the bench can remove containers a killed run left;
- with ``--network host`` (the bench's default): ``--network host`` and
  ``host.docker.internal`` mapped to 127.0.0.1, so the container reaches rlms' host proxy
  over loopback. rlms' own default (``--network bridge`` here) puts the container on Docker's
  default bridge and reaches the proxy at the bridge gateway; use it where that bridge exists.

Prints one JSON object on its last stdout line: answer, error, rlms version, seconds spent
importing rlms and in ``completion()``, and rlms' usage summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from importlib import metadata


def patch_docker_run(label: str, host_network: bool) -> None:
    """Add our label (and host networking) to rlms' ``docker run``; every other call is untouched."""
    real_run = subprocess.run

    def run(args, *a, **kw):  # type: ignore[no-untyped-def]
        if isinstance(args, list) and args[:2] == ["docker", "run"]:
            args = list(args)
            extra = ["--label", label]
            if host_network:
                extra += ["--network", "host"]
                args = [
                    "host.docker.internal:127.0.0.1" if x == "host.docker.internal:host-gateway" else x
                    for x in args
                ]
            args[2:2] = extra
        return real_run(args, *a, **kw)

    subprocess.run = run  # rlms' docker_repl calls subprocess.run through the module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:PORT/v1"
    )
    ap.add_argument("--model", required=True, help="model name sent to the server (no provider prefix)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "sk-local"))
    ap.add_argument("--task", required=True, help="the question (rlms' root_prompt)")
    ap.add_argument("-i", "--input", required=True, help="text file given as rlms' context")
    ap.add_argument("--depth", type=int, default=1, help="rlms max_depth (1: the paper's setting)")
    ap.add_argument("--image", default="rlms-repl:bookworm", help="DockerREPL image")
    ap.add_argument("--network", choices=("host", "bridge"), default="host")
    ap.add_argument("--label", default="rlm-bench.run=manual", help="label key=value for its containers")
    ap.add_argument(
        "--max-concurrent-subcalls", type=int, default=16, help="rlms threads for rlm_query_batched"
    )
    ap.add_argument("--max-iterations", type=int, default=30)
    args = ap.parse_args()

    out: dict[str, object] = {"answer": None, "error": None}
    try:
        out["rlms_version"] = metadata.version("rlms")
    except metadata.PackageNotFoundError:
        out["rlms_version"] = None
    try:
        patch_docker_run(args.label, args.network == "host")
        t0 = time.perf_counter()
        from rlm import RLM

        out["import_s"] = time.perf_counter() - t0
        with open(args.input, encoding="utf-8") as f:
            context = f.read()
        rlm = RLM(
            backend="openai",
            backend_kwargs={"model_name": args.model, "base_url": args.base_url, "api_key": args.api_key},
            environment="docker",
            environment_kwargs={"image": args.image},
            max_depth=args.depth,
            max_iterations=args.max_iterations,
            max_concurrent_subcalls=args.max_concurrent_subcalls,
        )
        t1 = time.perf_counter()
        result = rlm.completion(context, root_prompt=args.task)
        out["completion_s"] = time.perf_counter() - t1
        out["answer"] = str(result.response).strip()
        try:
            out["usage"] = result.usage_summary.to_dict()
        except Exception:  # usage is informative only
            out["usage"] = None
    except Exception as exc:  # reported to the bench as this run's error, never a hang
        out["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    print(json.dumps(out))
    return 0 if out["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
