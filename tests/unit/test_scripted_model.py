"""The scripted model: its HTTP server, its RLM policy's generated code, the log generator.

These tests talk HTTP with urllib (no LiteLLM), so they stay fast; the LiteLLM path against
the same server is in test_lm_client.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.rlm.parsing import find_code_blocks, find_final
from rlm_sandbox.testing import (
    DEFAULT_NEEDLE,
    HTTPReply,
    LogStats,
    ScriptedModelServer,
    always_status,
    answer_leaf,
    fail_then,
    generate_log,
    rlm_policy,
    sequence_policy,
)

SYSTEM = (
    "You are an RLM. The input is in the variable `context` of a Python REPL. Write code in "
    "```repl blocks; call llm_query(prompt) and llm_query_batched(prompts); finish with FINAL_VAR(name)."
)
COUNT_TASK = 'How many lines contain "ERROR disk"?'
SEARCH_TASK = "What is the secret code?"


def post(url: str, body: dict[str, Any], timeout: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(
        url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-x"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def chat(content: str, *, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return {"model": "scripted", "messages": messages}


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def log() -> LogStats:
    stats = generate_log(None, 200_000, seed=7, error_every=37)
    assert stats.text is not None
    return stats


# --------------------------------------------------------------------------- server


def test_chat_completion_shape(server: ScriptedModelServer) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
    assert server.model_name == "openai/scripted"
    status, raw, _ = post(server.url, chat('TASK: Find "code"\n\nTEXT:\nthe code is XY-1\n'))
    assert status == 200
    data = json.loads(raw)
    assert data["object"] == "chat.completion"
    assert data["model"] == "scripted"
    assert data["id"] and isinstance(data["created"], int)
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "XY-1"}
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert server.requests.count == 1
    assert server.requests.last() == chat('TASK: Find "code"\n\nTEXT:\nthe code is XY-1\n')


def test_path_without_v1_and_models_listing(server: ScriptedModelServer) -> None:
    base = server.url[: -len("/v1")]
    status, _, _ = post(base, chat("hello"))
    assert status == 200
    with urllib.request.urlopen(server.url + "/models", timeout=5) as resp:
        listing = json.loads(resp.read())
    assert listing["data"][0]["id"] == "scripted"
    assert server.requests.count == 1  # only chat completions are counted


def test_streaming_is_valid_sse(server: ScriptedModelServer) -> None:
    body = chat("TASK: Find the needle\n\nTEXT:\nneedle: N-9\n") | {"stream": True}
    status, raw, headers = post(server.url, body)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in raw.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "N-9"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_bad_json_and_unknown_route(server: ScriptedModelServer) -> None:
    req = urllib.request.Request(server.url + "/chat/completions", data=b"{nope", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400
    status, _, _ = post(server.url + "/nowhere", chat("x"))
    assert status == 404


def test_policy_helpers() -> None:
    seq = sequence_policy("a", "b")
    assert [seq({}) for _ in range(4)] == ["a", "b", "b", "b"]
    flaky = fail_then(seq, 429, 2)
    first, second, third = flaky({}), flaky({}), flaky({})
    assert isinstance(first, HTTPReply) and first.status == 429 and "error" in first.body
    assert isinstance(second, HTTPReply)
    assert third == "b"
    dead = always_status(500)
    reply = dead({})
    assert isinstance(reply, HTTPReply) and reply.status == 500


def test_http_errors_and_broken_policy() -> None:
    def broken(request: dict[str, Any]) -> str:
        raise RuntimeError("policy bug")

    with ScriptedModelServer(fail_then(broken, 429, 1, headers={"Retry-After": "1"})) as srv:
        status, raw, headers = post(srv.url, chat("x"))
        assert status == 429 and headers["Retry-After"] == "1"
        assert json.loads(raw)["error"]["type"] == "rate_limit_exceeded"
        status, raw, _ = post(srv.url, chat("x"))
        assert status == 500 and "policy bug" in json.loads(raw)["error"]["message"]
        assert srv.requests.count == 2


def test_arrival_times_are_recorded_at_the_server(server: ScriptedModelServer) -> None:
    """scripts/bench.py measures an engine's first model request at the server: from its own
    spawn time to the first arrival after it. Ordering only, no timed assertion."""
    assert server.requests.arrivals == [] and server.requests.first_after(0.0) is None
    before = time.perf_counter()
    post(server.url, chat("one"))
    between = time.perf_counter()
    post(server.url, chat("two"))
    post(server.url + "/nowhere", chat("x"))  # not a chat completion: no arrival
    after = time.perf_counter()
    first, second = server.requests.arrivals
    assert before <= first <= between <= second <= after
    assert server.requests.first_after(before) == first
    assert server.requests.first_after(between) == second
    assert server.requests.first_after(after) is None
    server.requests.record({"late": True}, arrived=before)  # an out-of-order record stays sorted
    assert server.requests.arrivals == [before, first, second]
    assert server.requests.count == 3


def test_many_concurrent_requests_with_latency() -> None:
    n = 256
    with ScriptedModelServer(sequence_policy("ok"), latency_s=0.5) as srv:
        results: list[int] = []
        lock = threading.Lock()

        def one() -> None:
            status, _, _ = post(srv.url, chat("hi"), timeout=30)
            with lock:
                results.append(status)

        threads = [threading.Thread(target=one) for _ in range(n)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        elapsed = time.perf_counter() - start
    assert results == [200] * n
    assert srv.requests.count == n
    assert elapsed < 10, elapsed  # served concurrently, not one after another (would be 128 s)


def test_close_is_idempotent_and_frees_the_port() -> None:
    srv = ScriptedModelServer().start()
    url = srv.url
    srv.close()
    srv.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/models", timeout=2)


# --------------------------------------------------------------------------- the RLM policy


def rlm_request(task: str, *, assistant_turns: int = 0, last_user: str | None = None) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"The input is loaded as `context`.\nTask: {task}\nBegin."},
    ]
    for i in range(assistant_turns):
        messages.append({"role": "assistant", "content": f"step {i}"})
        messages.append({"role": "user", "content": last_user or "Output:\nok"})
    return {"model": "scripted", "messages": messages}


def leaf_batched(prompts: list[str]) -> list[str]:
    """What the engine does at the last depth: each prompt is a plain sub-LM call."""
    assert isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)
    out = []
    for p in prompts:
        reply = rlm_policy({"messages": [{"role": "user", "content": p}]})
        assert isinstance(reply, str)
        out.append(reply)
    return out


def step1_code(task: str) -> str:
    reply = rlm_policy(rlm_request(task))
    assert isinstance(reply, str)
    assert find_final(reply) is None
    blocks = find_code_blocks(reply)
    assert len(blocks) == 1
    assert repr(task) in blocks[0]
    return blocks[0]


def run_step1(task: str, context: Any, batched: Any = leaf_batched) -> dict[str, Any]:
    """Run the first cell; what it cites is kept in ``ns["cited"]`` as (path, line, quote)."""
    cited: list[tuple[Any, int, str]] = []
    ns: dict[str, Any] = {
        "context": context,
        "llm_query_batched": batched,
        "cite": lambda path, line, quote: cited.append((path, line, quote)),
        "cited": cited,
    }
    exec(compile(step1_code(task), "<cell>", "exec"), ns)
    return ns


def test_step1_count_task(log: LogStats, capsys: pytest.CaptureFixture[str]) -> None:
    ns = run_step1(COUNT_TASK, log.text)
    assert log.disk_errors > 4
    assert ns["answer"] == str(log.disk_errors)
    assert len(ns["pieces"]) == 4
    assert "".join(ns["pieces"]) == log.text  # split at newlines, nothing lost
    assert all(p.endswith("\n") for p in ns["pieces"])
    assert "answer:" in capsys.readouterr().out
    lines = log.text.splitlines()
    assert len(ns["cited"]) == 3  # a text: its first three matching lines
    assert all(path is None and "ERROR disk" in lines[n - 1] for path, n, _quote in ns["cited"])
    assert [n for _p, n, _q in ns["cited"]] == [i + 1 for i, t in enumerate(lines) if "ERROR disk" in t][:3]


def test_step1_counts_a_dict_of_files_and_cites_each_file() -> None:
    files = {
        "a.log": "ok\nERROR disk full\nok\n",
        "b.log.gz": "x\n" * 5000 + "ERROR disk late\n",
        "none.log": "nothing here\n",
    }
    ns = run_step1(COUNT_TASK, files)
    assert ns["answer"] == "2"
    assert ns["cited"] == [("a.log", 2, "ERROR disk"), ("b.log.gz", 5001, "ERROR disk")]
    assert all(p.count("TASK: ") == 1 for p in ns["prompts"])


def test_step1_in_a_child_cites_the_runs_file_and_line(log: LogStats) -> None:
    """A child's text says where it starts (SOURCE): its citations are in the root's terms."""
    assert log.text is not None
    lines = log.text.splitlines(keepends=True)
    first = next(i for i, t in enumerate(lines) if "ERROR disk" in t)
    start = max(0, first - 10)
    piece = "".join(lines[start : start + 200])
    nested = f'TASK: {COUNT_TASK}\n\nSOURCE: {{"file": "big.log", "line": {start + 1}}}\n\nTEXT:\n{piece}'
    ns = run_step1("Answer the request held in `context` (it came from your parent).", nested)
    assert ns["task"] == COUNT_TASK
    assert ns["cited"] and ns["cited"][0] == ("big.log", first + 1, "ERROR disk")


def test_step1_search_task(log: LogStats) -> None:
    ns = run_step1(SEARCH_TASK, log.text)
    assert ns["answer"] == "QX-4417"
    ns = run_step1("Find the magic number", generate_log(None, 50_000, needle="the magic number: 31337").text)
    assert ns["answer"] == "31337"


def test_step1_search_without_needle() -> None:
    stats = generate_log(None, 60_000, needle=None)
    assert stats.needle_line is None
    assert run_step1(SEARCH_TASK, stats.text)["answer"] == "NOT FOUND"


def test_step1_quoted_search_phrase(log: LogStats) -> None:
    assert run_step1('What comes after "secret code is"?', log.text)["answer"] == "QX-4417"


def test_step1_nested_context_is_unwrapped(log: LogStats) -> None:
    """A child RLM's context is its parent's prompt; its own Task line only points at it."""
    assert log.text is not None
    piece = log.text[: len(log.text) // 2]
    piece = piece[: piece.rfind("\n") + 1]
    truth = sum(1 for line in piece.splitlines() if "ERROR disk" in line)
    nested = "TASK: " + COUNT_TASK + "\n\nTEXT:\n" + piece
    seen: list[str] = []

    def batched(prompts: list[str]) -> list[str]:
        seen.extend(prompts)
        return leaf_batched(prompts)

    ns = run_step1("Answer the request held in `context` (it came from your parent).", nested, batched)
    assert ns["task"] == COUNT_TASK
    assert ns["answer"] == str(truth)
    assert all(p.startswith("TASK: " + COUNT_TASK + "\n\nSOURCE: ") for p in seen)
    assert all(p.count("TASK: ") == 1 for p in seen)  # the inner text was split, not the wrapper
    assert sum(len(p.split("\n\nTEXT:\n", 1)[1]) for p in seen) == len(piece)


def test_two_level_recursion_end_to_end(log: LogStats) -> None:
    """Depth 2: the root's sub-calls are child RLMs whose sub-calls are leaves."""

    def child_batched(prompts: list[str]) -> list[str]:
        answers = []
        for p in prompts:
            ns = run_step1("Answer the request in `context`.", p)
            answers.append(ns["answer"])
        return answers

    assert run_step1(COUNT_TASK, log.text, child_batched)["answer"] == str(log.disk_errors)
    assert run_step1(SEARCH_TASK, log.text, child_batched)["answer"] == "QX-4417"


def test_step1_small_and_list_contexts() -> None:
    small = "INFO ok\nERROR disk failure\nERROR disk failure\n"
    ns = run_step1(COUNT_TASK, small)
    assert len(ns["pieces"]) == 1 and ns["answer"] == "2"
    lines = ["ERROR disk x"] * 9 + ["INFO fine"] * 5
    ns = run_step1(COUNT_TASK, lines)
    assert len(ns["pieces"]) == 4 and ns["answer"] == "9"
    ns = run_step1(COUNT_TASK, ["ERROR disk"])
    assert len(ns["pieces"]) == 1 and ns["answer"] == "1"


def test_later_steps_finish_with_final_var() -> None:
    for turns, last in [(1, "Output:\n4 pieces\nanswer: 12"), (2, "ok"), (1, "Traceback ...\nNameError: x")]:
        reply = rlm_policy(rlm_request(COUNT_TASK, assistant_turns=turns, last_user=last))
        assert isinstance(reply, str)
        assert find_code_blocks(reply) == []
        final = find_final(reply)
        assert final is not None and final.kind == "var" and final.value == "answer"


def test_rlm_node_over_http(server: ScriptedModelServer) -> None:
    status, raw, _ = post(server.url, rlm_request(SEARCH_TASK))
    assert status == 200
    content = json.loads(raw)["choices"][0]["message"]["content"]
    assert "```repl" in content and "llm_query_batched" in content


def test_leaf_answers() -> None:
    text = "a ERROR disk 1\nb\nc ERROR disk 2\nd error disk 3\n"
    assert answer_leaf(f"TASK: {COUNT_TASK}\n\nTEXT:\n{text}") == "2"  # case-sensitive
    assert answer_leaf("TASK: Count the lines.\n\nTEXT:\nx\n\ny\n") == "2"
    assert answer_leaf("TASK: What is the secret code?\n\nTEXT:\nfoo\nSecret code = AB-12 bar\n") == "AB-12"
    assert answer_leaf("TASK: What is the secret code?\n\nTEXT:\nnothing here\n") == "NOT FOUND"
    assert answer_leaf("no task at all, but the needle: ZZ9 is here") == "ZZ9"
    assert answer_leaf("just a question?") == "NOT FOUND"
    assert answer_leaf('TASK: What is the value of "port"?\n\nTEXT:\nhost=a\nport = 8080\n') == "8080"
    # The content may come as a list of typed parts (OpenAI format).
    parts = [
        {"type": "text", "text": "TASK: Find the needle\n\nTEXT:\n"},
        {"type": "text", "text": "needle is Q1"},
    ]
    assert rlm_policy({"messages": [{"role": "user", "content": parts}]}) == "Q1"


# --------------------------------------------------------------------------- log generator


def test_generate_log_is_deterministic_and_exact(tmp_path: Path) -> None:
    a = generate_log(tmp_path / "a.log", 300_000, seed=3, error_every=41)
    b = generate_log(tmp_path / "b.log", 300_000, seed=3, error_every=41)
    generate_log(tmp_path / "c.log", 300_000, seed=4, error_every=41)
    data = (tmp_path / "a.log").read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256((tmp_path / "b.log").read_bytes()).digest()
    assert data != (tmp_path / "c.log").read_bytes()
    assert a.path == tmp_path / "a.log"
    assert dataclasses.replace(a, path=None) == dataclasses.replace(b, path=None)
    mem = generate_log(None, 300_000, seed=3, error_every=41)
    assert mem.text is not None and mem.text.encode() == data

    lines = data.decode().splitlines()
    assert a.size_bytes == len(data) and abs(len(data) - 300_000) < 300
    assert a.lines == len(lines)
    assert a.disk_errors == sum(1 for line in lines if "ERROR disk" in line)
    assert (
        a.disk_errors == a.lines // 41 or a.disk_errors == (a.lines // 41) - 1
    )  # the needle may take one slot
    needles = [i for i, line in enumerate(lines, 1) if DEFAULT_NEEDLE in line]
    assert needles == [a.needle_line]
    assert 0.6 < (a.needle_line or 0) / a.lines < 0.8
    for needle_phrase in ("secret code", "magic number", "needle"):
        assert sum(1 for line in lines if needle_phrase in line.lower()) == (needle_phrase == "secret code")
    assert all(
        re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[req-[0-9a-f]{8}\] ", line) for line in lines
    )


def test_generate_log_tiny_and_custom_needle() -> None:
    tiny = generate_log(None, 0)
    assert tiny.lines == 1 and tiny.needle_line == 1 and tiny.text is not None and DEFAULT_NEEDLE in tiny.text
    none = generate_log(None, 0, needle=None)
    assert none.lines == 0 and none.text == ""
    custom = generate_log(None, 10_000, needle="magic number = 42 ✓")
    assert custom.text is not None and custom.size_bytes == len(custom.text.encode())


def test_generate_log_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    stats = generate_log(tmp_path / "big.log", 20_000_000)
    elapsed = time.perf_counter() - start
    assert stats.size_bytes >= 20_000_000
    assert elapsed < 3.0, elapsed  # 100 MB takes ~2 s here


def test_leaf_search_skips_mentions_without_a_value() -> None:
    text = "the needle\nnothing\nİstanbul\nthe secret code: K-7\n"
    assert answer_leaf("TASK: What is the secret code?\n\nTEXT:\n" + text) == "K-7"
    assert answer_leaf("TASK: What is the secret code?\n\nTEXT:\n" + text.replace("İ", "I")) == "K-7"
