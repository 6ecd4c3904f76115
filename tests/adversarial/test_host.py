"""Attacks on the host around the container (issue 13): what a cell, a model or a trace
makes the *controller* evaluate, through the whole engine (real containers, the scripted
model over HTTP, the real CLI where the CLI is the target).

Bounds in seconds are generous on purpose (the machine is shared): each separates
"contained" from the minutes or the hang that the attack caused before the fix.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.testing.server import ScriptedModelServer

from ..conftest import ROOT, tenant_containers
from ..helpers import cells_then_final
from .conftest import ROWS, RUNTIME

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]

LEAF = "\x00leaf\x00"
EVIL_SCHEMA = {"type": "string", "pattern": "^(a+)+$"}
EVIL_PROMPT = 'Reply with exactly "' + "a" * 30 + '!"'


def echo_leaf(*cells: str) -> Any:
    """Nodes run ``cells``; a plain model call answers, as JSON, the text it was asked to
    reply with exactly (so a typed leaf answers ``"aaa...a!"``)."""
    node = cells_then_final(*cells, leaf=LEAF)

    def policy(request: dict[str, Any]) -> Any:
        reply = node(request)
        if reply != LEAF:
            return reply
        text = " ".join(str(m.get("content")) for m in request.get("messages") or [])
        m = re.search(r'Reply with exactly "([^"]*)"', text)
        return json.dumps(m.group(1) if m else "?")

    return policy


class Ticker:
    """A host thread that must keep running while the engine evaluates hostile input."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.ticks.append(time.monotonic())
            time.sleep(0.02)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def max_gap(self) -> float:
        return max((b - a for a, b in zip(self.ticks, self.ticks[1:], strict=False)), default=0.0)


class CountingServer:
    """An HTTP server on loopback that counts requests: nothing should ever reach it."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b'{"type": "integer"}')

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/schema.json"

    def close(self) -> None:
        self.server.shutdown()


# ---------------------------------------------------------------- finding 1: the GIL


def test_hostile_output_schemas_give_the_cell_a_catchable_error(attack) -> None:
    """The issue's reproduction and its variants: a catastrophic pattern, a pattern RE2
    refuses, a remote $ref, and an exponential anyOf/$ref schema. Each must end in an
    answer or an error the cell catches, quickly, while the host's other threads run."""
    remote = CountingServer()
    defs = {f"a{i}": {"anyOf": [{"$ref": f"#/$defs/a{i + 1}"}] * 2} for i in range(40)}
    defs["a40"] = {"type": "integer"}
    exponential = {"$defs": defs, "$ref": "#/$defs/a0"}
    code = f"""
results = {{}}
def attempt(label, prompt, schema):
    try:
        results[label] = ('answer', llm_query(prompt, output=schema))
    except LLMQueryError as e:
        results[label] = ('caught', str(e)[:300])
attempt('redos', {EVIL_PROMPT!r}, {EVIL_SCHEMA!r})
attempt('lookahead', 'Reply with exactly "ab"', {{'type': 'string', 'pattern': 'a(?=b)'}})
attempt('remote', 'Reply with exactly "ab"', {{'$ref': {remote.url!r}}})
attempt('exponential', 'Reply with exactly "ab"', {exponential!r})
attempt('fine', 'Reply with exactly "ab"', {{'type': 'string', 'pattern': '^ab$'}})
for k, v in results.items():
    print(k, v)
"""
    try:
        with Ticker() as ticker:
            out = attack(code, policy=echo_leaf(code), rlm={"timeout": 40}, sandbox={"cell_timeout": 60})
    finally:
        remote.close()
    assert out.result.status == "ok", out.result
    shown = out.first_output
    lines = {line.split(" ", 1)[0]: line for line in shown.splitlines()}
    assert "caught" in lines["redos"] and "did not match the schema" in lines["redos"], shown
    assert "caught" in lines["lookahead"] and "RE2" in lines["lookahead"], shown
    assert "caught" in lines["remote"] and "fetches nothing" in lines["remote"], shown
    assert "caught" in lines["exponential"] and "stopped" in lines["exponential"], shown
    assert lines["fine"].endswith("('answer', 'ab')"), shown
    assert remote.hits == [], "the host fetched a $ref a cell named"
    # Python's re needs ~74 s per attempt here (4 attempts): a freeze shows up as a gap.
    assert ticker.max_gap() < 5.0, f"the host's other threads stopped for {ticker.max_gap():.1f} s"


def test_hostile_output_schema_for_a_child_rlm(attack) -> None:
    """At depth 2 the schema travels with a child node and checks its final answer."""
    code = (
        "try:\n"
        f"    print('answer', rlm_query({EVIL_PROMPT!r}, output={EVIL_SCHEMA!r}))\n"
        "except LLMQueryError as e:\n"
        "    print('caught', e)\n"
    )
    child_final = "FINAL('" + "a" * 30 + "!')"

    def policy(request: dict[str, Any]) -> Any:
        system = str((request.get("messages") or [{}])[0].get("content"))
        if "depth 1 of" in system:
            return child_final
        return cells_then_final(code)(request)

    with Ticker() as ticker:
        out = attack(code, policy=policy, rlm={"depth": 2, "timeout": 40, "schema_retries": 1})
    assert out.result.status == "ok", out.result
    assert "caught" in out.first_output and "did not match the schema" in out.first_output
    assert ticker.max_gap() < 5.0


def test_sigint_is_honoured_while_the_host_checks_hostile_schemas(run_id: str, tmp_path: Path) -> None:
    """The CLI, a cell that keeps asking for the catastrophic check: Ctrl-C must stop the
    run and remove its containers (before, the main thread never got the GIL back)."""
    code = (
        "import time\nt0 = time.time()\nwhile time.time() - t0 < 120:\n"
        f"    try:\n        llm_query({EVIL_PROMPT!r}, output={EVIL_SCHEMA!r})\n"
        "    except LLMQueryError:\n        pass\n"
    )
    server = ScriptedModelServer(echo_leaf(code)).start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm_sandbox.cli", "run", "--model", server.model_name,
         "--api-base", server.url, "--tenant", run_id, "--task", "t", "--timeout", "200",
         "--cell-timeout", "150", "-i", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "OPENAI_API_KEY": server.api_key, "RLM_SANDBOX_NO_LIVE": "1"},
    )  # fmt: skip
    try:
        proc.stdin.write(b"input")  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 120
        while server.requests.count < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # the root's step and at least two typed leaf answers
        assert server.requests.count >= 3, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code_ = proc.wait(timeout=30)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
        left = tenant_containers(run_id)
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True)
    ROWS.append(
        {
            "attack": "sigint_during_hostile_schema_checks",
            "runtime": RUNTIME,
            "status": f"exit {code_}",
            "outcome": "SIGINT honoured, containers removed",
            "seconds": round(seconds, 2),
            "breached": False,
        }
    )
    assert code_ != 0
    assert left == []


# ---------------------------------------------------------------- finding 6: replay


def fan_out(request: dict[str, Any]) -> str:
    """Depth 3, four children per node: 21 nodes; the deepest sleep so they overlap."""
    msgs = request.get("messages") or []
    system = str(msgs[0].get("content")) if msgs else ""
    if "```repl" not in system:
        return "leaf"
    if any(m.get("role") == "assistant" for m in msgs):
        return "FINAL(done)"
    if "depth 2 of" in system:
        return "```repl\nimport time\ntime.sleep(1)\n```"
    return "```repl\nprint(llm_query_batched(['a', 'b', 'c', 'd']))\n```"


class AlivePoller:
    """Counts the containers of a tenant alive at once, from the engine itself."""

    def __init__(self, *tenants: str) -> None:
        self.tenants = tenants
        self.peak = dict.fromkeys(tenants, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for tenant in self.tenants:
                alive = subprocess.run(
                    ["docker", "ps", "-q", "--filter", f"label=rlm-sandbox.tenant={tenant}"],
                    capture_output=True, text=True,
                ).stdout.split()  # fmt: skip
                self.peak[tenant] = max(self.peak[tenant], len(alive))
            time.sleep(0.1)

    def __enter__(self) -> AlivePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def record_fan_out(tmp_path: Path, tenant: str) -> tuple[Path, Path]:
    from rlm_sandbox.rlm.api import RLM
    from rlm_sandbox.rlm.config import RLMConfig

    source = tmp_path / "input.txt"
    source.write_text("some input\n")
    trace = tmp_path / "recorded.jsonl"
    with ScriptedModelServer(fan_out) as server:
        config = RLMConfig(
            api_base=server.url, trace=str(trace), depth=3, max_containers=32, pool_size=0,
            tenant=tenant, timeout=180,
        )  # fmt: skip
        result = RLM(model=server.model_name, config=config, api_key=server.api_key).run(
            context=source, task="Fan out."
        )
    assert result.status == "ok" and result.nodes == 21, result
    return trace, source


def craft(trace: Path, **start: Any) -> Path:
    """The trace with a hostile run_start: no limits, a huge container cap, another tenant."""
    lines = trace.read_text().splitlines()
    out = []
    for line in lines:
        event = json.loads(line)
        if event["event"] == "run_start":
            event["limits"] = {
                "depth": start.get("depth", event["depth"]), "max_lm_calls": None, "max_tokens": None,
                "max_cost": None, "timeout_s": None, "max_containers": 4096, "max_nodes": None,
                "max_tool_calls": None,
            }  # fmt: skip
            event.update({"tenant": "victim-tenant", **start})
        out.append(json.dumps(event))
    crafted = trace.with_name("crafted.jsonl")
    crafted.write_text("\n".join(out) + "\n")
    return crafted


def replay_cli(crafted: Path, source: Path, tmp_path: Path, tenant: str, *extra: str) -> Any:
    config_home = tmp_path / "config"  # no user settings file: the defaults of `run`
    config_home.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "rlm_sandbox.cli", "replay", str(crafted), "-i", str(source),
         "--trace", str(tmp_path / "replayed.jsonl"), "--json", *extra],
        capture_output=True, cwd=tmp_path, timeout=200,
        env={**os.environ, "XDG_CONFIG_HOME": str(config_home), "RLM_SANDBOX_MAX_CONTAINERS": "4",
             "RLM_SANDBOX_TENANT": tenant},
    )  # fmt: skip


def test_a_crafted_trace_cannot_set_the_replays_limits_or_tenant(run_id: str, tmp_path: Path) -> None:
    trace, source = record_fan_out(tmp_path, f"{run_id}-rec")
    crafted = craft(trace)
    t0 = time.monotonic()
    with AlivePoller(run_id, "victim-tenant") as poller:
        proc = replay_cli(crafted, source, tmp_path, run_id)
    seconds = time.monotonic() - t0
    stderr = proc.stderr.decode()[-3000:]
    assert proc.returncode in (0, 1), stderr
    report = json.loads(proc.stdout)
    start = json.loads((tmp_path / "replayed.jsonl").read_text().splitlines()[0])
    assert start["event"] == "run_start" and start["tenant"] == run_id, start
    limits = start["limits"]
    assert limits["max_containers"] == 4 and limits["timeout_s"] == 1800.0, limits
    assert limits["max_lm_calls"] == 500 and limits["max_nodes"] == 1000, limits
    assert start["depth"] == 3  # the recorded depth: it fits the user's 4 containers
    ROWS.append(
        {
            "attack": "crafted_trace_replay_limits",
            "runtime": RUNTIME,
            "status": "identical" if report["identical"] else "diverged",
            "outcome": f"peak {poller.peak[run_id]} containers at once (user's max_containers 4; "
            f"the trace asked for 4096)",
            "seconds": round(seconds, 2),
            "breached": poller.peak["victim-tenant"] > 0 or poller.peak[run_id] > 4,
        }
    )
    assert poller.peak["victim-tenant"] == 0
    assert 1 <= poller.peak[run_id] <= 4, poller.peak
    assert report["counts"]["nodes_replayed"] == 21, report["counts"]


def test_a_crafted_trace_deeper_than_the_users_containers_is_refused(run_id: str, tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_text("some input\n")
    start = {"event": "run_start", "run": "x", "t": 0, "task": "Fan out.", "depth": 16, "max_steps": 12}
    call = {"event": "lm_call", "run": "x", "t": 1, "node": "root", "depth": 0, "purpose": "step",
            "request_sha256": "0" * 64, "response": "FINAL(x)"}  # fmt: skip
    trace = tmp_path / "recorded.jsonl"
    trace.write_text(json.dumps(start) + "\n" + json.dumps(call) + "\n")
    proc = replay_cli(craft(trace, depth=16), source, tmp_path, run_id)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "depth 16" in stderr and "max_containers is 4" in stderr, stderr
    assert tenant_containers(run_id) == [] and tenant_containers("victim-tenant") == []


# ---------------------------------------------------------------- finding 7: smaller ones


def test_oversized_batches_are_refused_in_the_cell_not_killed(attack) -> None:
    """Past the host's limits a request is refused by the kernel with an error the cell
    catches (and that names the limit); the sandbox lives on."""
    code = """
def attempt(label, fn):
    try:
        fn()
        print(label, 'sent')
    except LLMQueryError as e:
        print(label, 'caught', e)
attempt('count', lambda: llm_query_batched(['x'] * 5000))
big = {'type': 'object', 'properties': {f'p{i:04d}': {'type': 'integer'} for i in range(120)}}
attempt('header', lambda: llm_query_batched(['y'] * 400, output=big))
print('alive', len(llm_query_batched(['z'] * 3)))
"""
    out = attack(code, sandbox={"max_frame_header": 4096})
    assert out.result.status == "ok", out.result
    shown = out.first_output
    assert "count caught" in shown and "at most 4096 prompts" in shown, shown
    assert "header caught" in shown and "at most 4096" in shown, shown
    assert "alive 3" in shown, shown


def test_a_forged_batch_past_the_limit_is_still_a_violation(attack) -> None:
    code = (
        "k = llm_query.__self__.link  # the REPL's link to the host: ids, the current cell, send\n"
        "k.send({'t': 'llm_request', 'id': k._new_id(), 'cell': k.current_cell, "
        "'sizes': [1] * 5000}, b'x' * 5000)\n"
        "import time\ntime.sleep(3)"
    )
    out = attack(code)
    assert out.result.status == "sandbox_error", out.result
    assert "sizes" in (out.result.error or ""), out.result.error


def test_tools_from_the_cwd_do_not_let_its_other_files_shadow_imports(run_id: str, tmp_path: Path) -> None:
    """A cloned repository with a ``rich.py`` next to the tools module: ``--tools`` must
    import the tools module and nothing else from there (before, the directory stayed
    first on sys.path and ``rich.py`` ran with the user's environment)."""
    marker = tmp_path / "rich-ran"
    (tmp_path / "rich.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "mytools.py").write_text(
        "def double(n: int) -> int:\n    '''Twice n.'''\n    return 2 * n\n\nTOOLS = {'double': double}\n"
    )
    (tmp_path / "input.txt").write_text("21\n")
    server = ScriptedModelServer(cells_then_final("print(double(21))", final="FINAL(42)")).start()
    console_script = Path(sys.executable).parent / "rlm-sandbox"  # no `python -m`: it adds the cwd itself
    try:
        proc = subprocess.run(
            [str(console_script), "run", "--model", server.model_name, "--api-base", server.url,
             "--tenant", run_id, "--task", "Double it.", "-i", "input.txt", "--tools", "mytools:TOOLS"],
            capture_output=True, cwd=tmp_path, timeout=200,
            env={**os.environ, "OPENAI_API_KEY": server.api_key, "RLM_SANDBOX_NO_LIVE": "1",
                 "XDG_CONFIG_HOME": str(tmp_path / "config")},
        )  # fmt: skip
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() == "42"
    assert not marker.exists(), "rich.py from the current directory ran"


LONE = "\ud800"


def surrogate_policy(request: dict[str, Any]) -> str:
    msgs = request.get("messages") or []
    if any(m.get("role") == "assistant" for m in msgs):
        return f"Done {LONE}. FINAL(ok {LONE} done)"
    return f"Looking {LONE}.\n```repl\nprint('seen', len(context))\n```"


def test_a_lone_surrogate_from_the_model_is_written_not_fatal(attack) -> None:
    """The reply reaches the engine as valid text (U+FFFD for the surrogate): the trace,
    the next request to the model and every writer can take it."""
    out = attack("unused", policy=surrogate_policy)
    assert out.result.status == "ok", out.result
    assert out.result.answer == "ok \ufffd done"
    end = out.events[-1]
    assert end["event"] == "run_end" and end["answer"] == "ok \ufffd done"


def test_the_trace_writer_writes_any_str(tmp_path: Path) -> None:
    from rlm_sandbox.trace.writer import Tracer, read_trace

    tracer = Tracer("r", tmp_path / "t.jsonl")
    tracer.emit("cell", node="root", output=f"a {LONE} b \udfff", code="é")
    tracer.close()
    event = read_trace(tmp_path / "t.jsonl")[0]
    assert event["output"] == f"a {LONE} b \udfff" and event["code"] == "é"  # read back exactly


def test_a_lone_surrogate_reaches_json_and_the_terminal_safely(run_id: str, tmp_path: Path) -> None:
    server = ScriptedModelServer(surrogate_policy).start()
    try:
        outputs = []
        for i, extra in enumerate((["--json"], [])):
            proc = subprocess.run(
                [sys.executable, "-m", "rlm_sandbox.cli", "run", "--model", server.model_name,
                 "--api-base", server.url, "--tenant", run_id, "--task", "t", "-i", "-",
                 "--trace", str(tmp_path / f"t{i}.jsonl"), *extra],
                input=b"input", capture_output=True, cwd=ROOT, timeout=200,
                env={**os.environ, "OPENAI_API_KEY": server.api_key, "RLM_SANDBOX_NO_LIVE": "1"},
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr.decode()[-2000:]
            outputs.append(proc.stdout)
    finally:
        server.close()
    assert json.loads(outputs[0])["answer"] == "ok \ufffd done"
    assert outputs[1].decode("utf-8").strip() == "ok \ufffd done"  # the terminal gets valid UTF-8
    from rlm_sandbox.trace.tree import load

    assert load(tmp_path / "t1.jsonl").answer == "ok \ufffd done"


def test_final_var_of_a_hanging_str_stays_within_the_runs_timeout(attack) -> None:
    """FINAL_VAR(x) makes the host wait on the kernel for str(x): that wait is bounded by
    the run's remaining wall time, not by the cell timeout (60 s here, the run 15 s)."""
    code = (
        "class Hang:\n    def __str__(self):\n        while True:\n            pass\nx = Hang()\nprint('set')"
    )
    out = attack(
        code, final="FINAL_VAR(x)", rlm={"timeout": 15}, sandbox={"cell_timeout": 60, "kill_grace": 1}
    )
    assert out.result.status == "budget_exhausted" and out.result.budget == "timeout", out.result
    assert out.seconds < 35, f"the run took {out.seconds:.1f} s against --timeout 15"  # 61+ s before


def test_a_huge_answer_keeps_the_trace_small(attack, tmp_path: Path) -> None:
    """RLMResult keeps the whole answer; the trace keeps 64 KB of it, its length and digest."""
    import hashlib

    size = 50 << 20
    out = attack(f"big = 'x' * {size}\nFINAL_VAR('big')", sandbox={"memory": "1g", "cell_timeout": 30})
    assert out.result.status == "ok", out.result
    assert out.result.answer is not None and len(out.result.answer) == size
    trace = tmp_path / "trace.jsonl"
    assert trace.stat().st_size < 1 << 20, trace.stat().st_size
    end = out.events[-1]
    assert end["event"] == "run_end" and end["answer_truncated"] is True and end["answer_chars"] == size
    assert end["answer_sha256"] == hashlib.sha256(b"x" * size).hexdigest()


def test_type_confused_traces_never_crash_the_trace_commands(tmp_path: Path) -> None:
    events = [
        {"event": "run_start", "run": "r", "t": "x", "model": ["m"], "depth": "deep"},
        {"event": "node_begin", "node": [], "parent": {"a": 1}, "depth": 1e308},
        {"event": "node_start", "node": "root", "container": 7, "start_s": "slow"},
        {"event": "lm_call", "node": "root", "prompt_tokens": "lots", "cost_usd": [1]},
        {"event": "cell", "node": "root", "step": "1", "index": None, "output": {"o": 1}},
        {"event": "node_end", "node": "n" + "9" * 4000, "status": 3, "wall_s": "x"},
        [1, 2],
        "text",
        42,
        None,
        {"event": 5},
        {"event": "run_end", "status": "ok", "answer": {"not": "text"}, "tokens": "many"},
    ]
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps(e) for e in events) + "\n" + "1" * 10_000 + "\n")
    for args in (["show"], ["summary"], ["html", "-o", str(tmp_path / "t.html")]):
        proc = subprocess.run(
            [sys.executable, "-m", "rlm_sandbox.cli", "trace", args[0], str(trace), *args[1:]],
            capture_output=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
        stderr = proc.stderr.decode()
        assert proc.returncode in (0, 2), stderr
        assert "unexpected" not in stderr and "Traceback" not in stderr, stderr
    shown = subprocess.run(
        [sys.executable, "-m", "rlm_sandbox.cli", "trace", "show", str(trace)], capture_output=True, cwd=ROOT
    ).stdout.decode()
    assert "malformed" in shown
