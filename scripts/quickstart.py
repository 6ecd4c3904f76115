"""A first look at the sandbox: a hardened container that keeps `context` in memory."""

from __future__ import annotations

from rlm_sandbox import Sandbox

LOG = "".join(
    f"2026-11-25 INFO request {i} ok\n" if i % 7 else f"2026-11-25 ERROR disk full on request {i}\n"
    for i in range(10_000)
)

with Sandbox(llm_handler=lambda prompt: f"(a model would answer: {prompt[:40]}...)") as sb:
    sb.load_context(LOG)
    r = sb.execute(
        "errors = [l for l in context.splitlines() if 'ERROR disk' in l]\nprint(len(errors), 'disk errors')"
    )
    print(r.stdout, end="")
    print(sb.execute("print(llm_query('summarise: ' + errors[0]))").stdout, end="")
    print(f"cell took {r.duration_s * 1000:.2f} ms in container {sb.id[:12]}")
