"""The run lifecycle (rlm/run.py, api.py, containers.py) through the in-memory seam: events in
order and balanced for every node on every path, result fields per outcome, no kernel left
alive whatever stopped the run, and what is refused before anything starts."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox import RLM, RLMConfig
from rlm_sandbox.errors import EXIT_CODES, BudgetExhausted, ConfigError, LMError
from rlm_sandbox.rlm.api import RecursiveLanguageModel
from rlm_sandbox.sandbox.backend import LABEL_NODE, LABEL_RUN, LABEL_TENANT
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.fake import FakeBackend
from rlm_sandbox.testing import HTTPReply, ScriptedClient, always_status, error_body, generate_log, rlm_policy
from rlm_sandbox.trace.writer import read_trace

from ..helpers import JSON_KEYS, cells_then_final, never_finishes, root_then_policy
from .seam import NOTIFY_ONLY, check_lifecycle, repl, turn

COUNT_TASK = 'How many lines contain "ERROR disk"?'


# ---- events


def test_an_ok_run_traces_run_and_node_events_in_order(seam) -> None:
    h = seam(cells_then_final("x = 1", final="FINAL(one)"))
    result = h.run("abc")
    assert result.status == "ok"
    assert check_lifecycle(h.events) == {"root": ["node_begin", "node_start", "node_end"]}
    kinds = h.kinds()
    # The root's first model call goes out while its container starts (issue 16): both follow
    # node_begin; its cells run in the container once the call answered, before node_end.
    assert kinds.index("node_begin") < min(kinds.index("lm_start"), kinds.index("node_start"))
    assert (
        max(kinds.index("lm_call"), kinds.index("node_start")) < kinds.index("cell") < kinds.index("node_end")
    )
    end = h.named("node_end")[0]
    assert (end["status"], end["steps"], end["answer"], end["error"]) == ("done", 2, "one", None)


def test_every_node_of_a_depth_two_tree_is_begun_started_and_ended_once(seam) -> None:
    stats = generate_log(None, 60_000, seed=7)
    h = seam(rlm_policy, depth=2, pool_size=0)
    result = h.run(stats.text, COUNT_TASK)
    assert result.status == "ok", result.error
    nodes = check_lifecycle(h.events)
    assert len(nodes) == result.nodes > 1
    assert all(seen == ["node_begin", "node_start", "node_end"] for seen in nodes.values())
    children = [e for e in h.named("node_begin") if e["node"] != "root"]
    assert {(e["parent"], e["depth"]) for e in children} == {("root", 1)}
    # Every node ran in a kernel of its own.
    containers = [e["container"] for e in h.named("node_start")]
    assert len(set(containers)) == len(containers) == len(h.backend.started)


def test_run_end_repeats_the_result(seam) -> None:
    h = seam(cells_then_final("print(1)"))
    result = h.run("abc")
    end = h.named("run_end")[0]
    assert {k: end[k] for k in JSON_KEYS} == result.to_json()
    assert end["models"] == result.models


def test_the_trace_file_holds_every_event_listeners_got(seam, tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    h = seam(cells_then_final("print(1)"), trace=str(path))
    result = h.run("abc", run_id="traced")
    assert result.trace == str(path)
    written = read_trace(path)
    assert [e["event"] for e in written] == h.kinds()
    assert {e["run"] for e in written} == {"traced"}


def test_a_failing_child_still_ends_its_node_and_the_run(seam) -> None:
    """A child whose model fails ends with node_end status error; the root and run end too."""
    stats = generate_log(None, 20_000, seed=2)
    policy = root_then_policy(rlm_policy, always_status(500))
    h = seam(policy, depth=2, pool_size=0)
    result = h.run(stats.text, COUNT_TASK)
    assert result.status == "lm_error"
    nodes = check_lifecycle(h.events)
    ends = {e["node"]: e for e in h.named("node_end")}
    assert set(ends) == set(nodes)
    assert all(e["status"] == "error" and e["error"] for e in ends.values())


# ---- results


def test_an_ok_result_counts_what_the_trace_shows(seam) -> None:
    h = seam(cells_then_final("x = 1", "print(x)"))
    result = h.run("abc")
    calls = h.calls()
    assert list(result.to_json()) == JSON_KEYS
    assert (result.status, result.error, result.budget, result.hint) == ("ok", None, None, None)
    assert result.exit_code == 0 and result.ok
    assert (result.steps, result.nodes, result.containers, result.max_depth_reached) == (3, 1, 1, 1)
    assert result.lm_calls == len(calls) == h.client.calls == 3
    assert result.tokens == {
        "prompt": sum(c["prompt_tokens"] for c in calls),
        "completion": sum(c["completion_tokens"] for c in calls),
    }
    assert result.models == {
        "scripted": {
            "calls": 3,
            "prompt_tokens": result.tokens["prompt"],
            "completion_tokens": result.tokens["completion"],
            "cost_usd": 0.0,
        }
    }
    assert set(result.timings) == {"lm_ready_s", "first_request_s", "first_lm_call_s", "first_cell_s"}


def test_a_budget_stop_is_a_typed_result_with_the_budget_named(seam) -> None:
    h = seam(never_finishes, max_lm_calls=2, fallback_answer=False)
    result = h.run("abc")
    assert (result.status, result.budget, result.answer) == ("budget_exhausted", "max_lm_calls", None)
    assert result.exit_code == EXIT_CODES["budget_exhausted"] == 3
    assert "--max-lm-calls" in (result.hint or "")
    assert list(result.to_json()) == JSON_KEYS
    budget_event = h.named("budget")[0]
    assert (budget_event["status"], budget_event["budget"]) == ("budget_exhausted", "max_lm_calls")
    check_lifecycle(h.events)


def test_a_model_error_is_an_lm_error_result(seam) -> None:
    h = seam(always_status(401, "bad key"))
    result = h.run("abc")
    assert (result.status, result.answer, result.budget) == ("lm_error", None, None)
    assert result.exit_code == 5
    assert "bad key" in (result.error or "")
    assert result.lm_calls == 1 and result.tokens == {"prompt": 0, "completion": 0}
    assert h.named("lm_error")[0]["error"].startswith("scripted 401")
    assert h.named("error")[0]["status"] == "lm_error"
    check_lifecycle(h.events)


def test_the_fatal_model_error_of_a_leaf_stops_the_whole_tree(seam) -> None:
    """The sub model's auth failure ends the run at the root's next check: no further step."""
    h = seam(
        cells_then_final("a = llm_query('q')", "print(2)", final="FINAL(never)"),
        sub_policy=always_status(401),
    )
    result = h.run("abc")
    assert result.status == "lm_error"
    assert len(h.calls("step")) == 1  # the root's first step only
    assert h.sub is not None and h.sub.calls == 1
    assert h.backend.started[0].cells == ["a = llm_query('q')\n"]


def test_the_fatal_model_error_in_one_child_stops_its_siblings_and_the_root(seam) -> None:
    stats = generate_log(None, 60_000, seed=8)
    policy = root_then_policy(rlm_policy, always_status(403))
    h = seam(policy, depth=2, pool_size=0)
    result = h.run(stats.text, COUNT_TASK)
    assert result.status == "lm_error" and "scripted 403" in (result.error or "")
    # The root never took a second step (it would have tried FINAL_VAR for 11 more).
    assert [c["purpose"] for c in h.calls() if c["node"] == "root"] == ["step"]
    children = {e["node"] for e in h.named("node_begin")} - {"root"}
    assert h.client.calls <= 1 + len(children)  # at most one failed call per child


def test_a_refused_child_start_is_an_error_in_the_parents_cell(seam) -> None:
    """One child's container does not start: the parent's llm_query fails, the run goes on."""
    backend = FakeBackend(refuse=lambda labels: labels[LABEL_NODE].endswith(".n2"))
    code = "try:\n    llm_query('sub task')\nexcept Exception as e:\n    print('caught', type(e).__name__, e)"
    h = seam(cells_then_final(code, final="FINAL(went on)"), backend=backend, depth=2, pool_size=0)
    result = h.run("abc")
    assert (result.status, result.answer) == ("ok", "went on")
    output = h.named("cell")[0]["output"]
    assert "caught LLMQueryError" in output and "refused to start" in output
    assert check_lifecycle(h.events)["n2"] == ["node_begin", "node_end"]


# ---- no kernel left alive


def test_a_refused_root_start_leaves_nothing(seam) -> None:
    h = seam(never_finishes, backend=FakeBackend(fail_starts=1))
    result = h.run("abc")
    assert result.status == "sandbox_error"
    # The first model call was already out while the container started (issue 16); the run
    # waited for it and nothing followed it.
    assert h.client.calls == 1 and result.lm_calls == 1 and h.backend.alive() == []
    assert check_lifecycle(h.events)["root"] == ["node_begin", "node_end"]


def test_a_kernel_killed_mid_run_is_a_sandbox_error(seam) -> None:
    holder: dict[str, Any] = {}

    def policy(request: dict[str, Any]) -> str:
        if turn(request) == 1:  # the second step: the root's kernel dies under it
            backend = holder["h"].backend
            backend.kill(backend.started[0].id)
        return repl("print('alive')")

    h = holder["h"] = seam(policy)
    result = h.run("abc")
    assert result.status == "sandbox_error"
    assert "killed" in (result.error or "")
    assert h.backend.alive() == []
    end = h.named("node_end")[0]
    assert end["status"] == "error" and "SandboxCrashed" in end["error"]
    check_lifecycle(h.events)


def test_an_exception_in_a_listener_drops_the_listener_not_the_run(seam) -> None:
    seen: list[str] = []

    def broken(event: dict[str, Any]) -> None:
        seen.append(event["event"])
        raise RuntimeError("a broken view")

    h = seam(cells_then_final("print(1)"))
    h.rlm.listeners.insert(0, broken)
    result = h.run("abc")
    assert result.status == "ok"
    assert seen == ["run_start"]  # called once, then dropped
    check_lifecycle(h.events)


def test_system_exit_from_a_listener_does_not_end_the_run(seam) -> None:
    """A closed terminal makes rich raise SystemExit: the view goes, the run stays."""

    def closed_terminal(event: dict[str, Any]) -> None:
        if event["event"] == "cell":
            raise SystemExit(1)

    h = seam(cells_then_final("print(1)"))
    h.rlm.listeners.insert(0, closed_terminal)
    assert h.run("abc").status == "ok"


def test_keyboard_interrupt_from_a_listener_takes_the_interrupt_path(seam) -> None:
    def ctrl_c(event: dict[str, Any]) -> None:
        if event["event"] == "cell":
            raise KeyboardInterrupt

    h = seam(cells_then_final("print(1)", "print(2)"))
    h.rlm.listeners.insert(0, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        h.run("abc")
    assert h.backend.alive() == []
    check_lifecycle(h.events)
    end = h.named("run_end")[0]
    assert (end["status"], end["reason"]) == ("error", "interrupted (SIGINT)")
    assert h.named("node_end")[0]["error"].startswith("KeyboardInterrupt")


def test_ctrl_c_while_children_run_removes_every_kernel(seam) -> None:
    """SIGINT reaches the main thread while children work in handler threads."""
    fired: list[bool] = []

    def child_working(event: dict[str, Any]) -> None:
        if event["event"] == "cell" and event["node"] != "root" and not fired:
            fired.append(True)
            # A real signal: it wakes the main thread out of its wait at once.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            time.sleep(0.2)  # this child is still working when the run stops

    stats = generate_log(None, 60_000, seed=9)
    h = seam(rlm_policy, depth=2, pool_size=0)
    h.rlm.listeners.append(child_working)
    with pytest.raises(KeyboardInterrupt):
        h.run(stats.text, COUNT_TASK)
    assert fired
    assert h.backend.alive() == []
    assert h.named("run_end")[0]["reason"] == "interrupted (SIGINT)"


# ---- run ids


def test_a_given_run_id_names_the_trace_and_every_container(seam) -> None:
    h = seam(cells_then_final("print(1)"), tenant="team-a")
    h.run("abc", run_id="run-given")
    assert {e["run"] for e in h.events} == {"run-given"}
    labels = h.backend.started[0].labels
    assert (labels[LABEL_RUN], labels[LABEL_NODE], labels[LABEL_TENANT]) == (
        "run-given",
        "run-given.root",
        "team-a",
    )


def test_default_run_ids_are_timestamped_and_unique(seam) -> None:
    h = seam(cells_then_final())
    h.run("a")
    h.run("b")
    ids = [e["run"] for e in h.named("run_start")]
    assert len(set(ids)) == 2
    assert all(re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{6}", rid) for rid in ids)


# ---- refused before anything starts


def test_the_local_backend_is_refused_for_a_tenant(seam) -> None:
    h = seam(cells_then_final(), tenant="acme", sandbox=SandboxConfig(backend="local"))
    with pytest.raises(ConfigError, match="refused for tenants"):
        h.run("abc")
    assert h.backend.started == [] and h.client.calls == 0 and h.events == []


def test_an_empty_or_blank_task_is_refused(seam) -> None:
    h = seam(cells_then_final())
    for task in ("", "   \n"):
        with pytest.raises(ConfigError, match="task is empty"):
            h.run("abc", task)
    assert h.backend.started == [] and h.events == []


def test_a_missing_input_file_is_refused(seam, tmp_path: Path) -> None:
    h = seam(cells_then_final())
    with pytest.raises(ConfigError, match="input file not found") as info:
        h.run(tmp_path / "nope.txt")
    assert "-i/--input" in info.value.hint
    assert h.backend.started == []


def test_no_model_and_no_client_is_refused() -> None:
    with pytest.raises(ConfigError, match="no model given"):
        RLM(backend=FakeBackend())


def test_keyword_overrides_are_validated_into_the_config() -> None:
    rlm = RLM(root_lm=ScriptedClient(), backend=FakeBackend(), config=RLMConfig(depth=2), max_steps=3)
    assert (rlm.config.max_steps, rlm.config.depth) == (3, 2)
    with pytest.raises(ValueError):
        RLM(root_lm=ScriptedClient(), max_steps=0)
    with pytest.raises(ValueError):
        RLM(root_lm=ScriptedClient(), no_such_setting=1)


def test_a_file_input_is_streamed_into_context(seam, tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("line one\nline two\n")
    h = seam(cells_then_final("n = len(context.splitlines())", final="FINAL_VAR(n)"))
    result = h.run(path)
    assert result.answer == "2"
    assert "about 18 characters" in h.client.requests[0]["messages"][0]["content"]


# ---- the reference-script names


def test_recursive_language_model_completion_returns_the_answer() -> None:
    rlm = RecursiveLanguageModel(
        root_lm=ScriptedClient(cells_then_final(final="FINAL(42)")), backend=FakeBackend()
    )
    assert rlm.completion(context="abc", query="what?") == "42"


def test_recursive_language_model_completion_raises_the_typed_error() -> None:
    stop = RecursiveLanguageModel(
        root_lm=ScriptedClient(never_finishes),
        config=RLMConfig(max_lm_calls=1, fallback_answer=False),
        backend=FakeBackend(),
    )
    with pytest.raises(BudgetExhausted) as info:
        stop.completion(context="abc", query="what?")
    assert info.value.budget == "max_lm_calls"

    def unavailable(request: dict[str, Any]) -> HTTPReply:
        return HTTPReply(404, error_body(404))

    failing = RecursiveLanguageModel(root_lm=ScriptedClient(unavailable), backend=FakeBackend())
    with pytest.raises(LMError):
        failing.completion(context="abc", query="what?")


def test_events_never_include_a_notify_only_tick_in_the_trace_file(seam, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    h = seam(cells_then_final("print(1)"), trace=str(path))
    h.run("x" * 1000)
    assert h.named("load_progress"), "listeners see load progress"
    assert not [e for e in read_trace(path) if e["event"] in NOTIFY_ONLY]


def test_a_node_the_budget_refuses_is_still_ended(seam) -> None:
    """A child past max_nodes is begun (it waited for admission) and must be ended too."""
    code = "try:\n    llm_query('sub')\nexcept Exception as e:\n    print('refused:', e)"
    h = seam(cells_then_final(code, final="FINAL(x)"), depth=2, pool_size=0, max_nodes=1)
    result = h.run("abc")
    assert (result.status, result.budget) == ("budget_exhausted", "max_nodes")
    nodes = check_lifecycle(h.events)
    assert nodes["n2"] == ["node_begin", "node_end"]
    end = next(e for e in h.named("node_end") if e["node"] == "n2")
    assert end["status"] == "error" and "limit of 1 RLM nodes" in end["error"]


def test_litellm_is_preloaded_only_for_a_model_that_needs_it(seam, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its import takes seconds of CPU: a run whose clients were given never starts it."""
    from rlm_sandbox.rlm import api

    started: list[bool] = []
    monkeypatch.setattr(api, "start_preload", lambda: started.append(True))
    h = seam(cells_then_final())
    assert h.run("abc").status == "ok"
    assert started == []
    RLM(model="openai/gpt-4o-mini", backend=FakeBackend()).setup().make_models()
    assert started == []  # OpenAI-compatible: called over httpx, never through LiteLLM (issue 16)
    RLM(model="openai/gpt-4o-mini", sub_model="anthropic/claude-sonnet-4-5", backend=FakeBackend())
    assert started == [True]  # started as soon as the models are named
