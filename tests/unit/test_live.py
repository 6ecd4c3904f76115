"""The live tree's model and drawing, fed synthetic events (no terminal, no containers)."""

from __future__ import annotations

import io

from rich.console import Console

from rlm_sandbox.trace.live import LiveTree


def draw(tree: LiveTree) -> str:
    out = io.StringIO()
    Console(file=out, width=140, height=tree.console.size.height, color_system=None).print(tree.render())
    return out.getvalue()


def make(height: int = 60, verbose: bool = False) -> LiveTree:
    console = Console(file=io.StringIO(), width=140, height=height, color_system=None)
    return LiveTree(console, verbose=verbose)


def test_statuses_follow_the_events() -> None:
    t = make()
    t.on_event({"event": "run_start", "model": "m/x", "limits": {"max_lm_calls": 10, "timeout_s": 60}})
    t.on_event({"event": "node_begin", "node": "root", "parent": None, "depth": 0})
    assert "starting" in draw(t)
    t.on_event({"event": "node_start", "node": "root", "depth": 0})
    t.on_event({"event": "lm_start", "node": "root", "purpose": "step"})
    assert "thinking" in draw(t)
    t.on_event(
        {
            "event": "lm_call",
            "node": "root",
            "purpose": "step",
            "prompt_tokens": 900,
            "completion_tokens": 100,
            "cost_usd": 0.5,
        }
    )
    t.on_event({"event": "cell_start", "node": "root", "step": 1})
    assert "running a cell" in draw(t)
    for _ in range(3):
        t.on_event({"event": "sub_call", "node": "root", "kind": "lm"})
    assert "waiting on 3 sub-calls" in draw(t)
    t.on_event(
        {
            "event": "lm_call",
            "node": "root",
            "purpose": "sub_call",
            "prompt_tokens": 10,
            "completion_tokens": 0,
        }
    )
    assert "waiting on 2 sub-calls" in draw(t)
    text = draw(t)
    assert "1.0k tok" in text and "$0.5000" in text
    assert "LM calls 8" in text  # 10 allowed, 2 made
    t.on_event(
        {"event": "node_end", "node": "root", "status": "error", "error": "SandboxCrashed: out of memory"}
    )
    text = draw(t)
    assert "failed" in text and "out of memory" in text and "0 containers up" in text


def test_big_fan_out_is_folded_to_the_screen() -> None:
    t = make(height=20)
    t.on_event({"event": "node_begin", "node": "root", "parent": None, "depth": 0})
    for i in range(1, 257):
        t.on_event({"event": "node_begin", "node": f"n{i}", "parent": "root", "depth": 1})
        t.on_event({"event": "node_start", "node": f"n{i}", "depth": 1})
        if i <= 250:
            t.on_event({"event": "node_end", "node": f"n{i}", "status": "done" if i % 50 else "error"})
    text = draw(t)
    assert len(text.splitlines()) <= 20
    assert "more:" in text and "done" in text and "failed" in text
    assert "n256" in text  # running nodes are shown first


def test_small_trees_are_shown_whole() -> None:
    t = make()
    t.on_event({"event": "node_begin", "node": "root", "parent": None, "depth": 0})
    for i in range(1, 9):
        t.on_event({"event": "node_begin", "node": f"n{i}", "parent": "root", "depth": 1})
        t.on_event({"event": "node_end", "node": f"n{i}", "status": "done"})
    text = draw(t)
    assert all(f"n{i} " in text for i in range(1, 9)) and "more:" not in text


def test_load_and_image_progress_are_shown() -> None:
    t = make()
    t.on_event({"event": "image_progress", "message": "building the sandbox image: step 2/5"})
    assert "building the sandbox image" in draw(t)
    t.on_event({"event": "node_begin", "node": "root", "parent": None, "depth": 0})
    t.on_event({"event": "node_start", "node": "root", "depth": 0})
    t.on_event({"event": "load_progress", "node": "root", "sent": 50_000_000, "size": 200_000_000})
    text = draw(t)
    assert "loading 50.0 MB/200.0 MB" in text and "building" not in text
    t.on_event({"event": "load_progress", "node": "root", "sent": 200_000_000, "size": 200_000_000})
    assert "loading" not in draw(t)


def test_the_model_router_waits_for_calls_in_flight() -> None:
    import threading
    import time
    from types import SimpleNamespace

    from rlm_sandbox.rlm.models import ModelRouter

    root, sub = SimpleNamespace(model="a"), SimpleNamespace(model="b")
    router = ModelRouter(root, sub, {1: "c"}, make_client=lambda m: SimpleNamespace(model=m))
    assert router.for_node(0) is root and router.for_node(1).model == "c" and router.for_node(2) is sub
    assert router.for_leaf(0).model == "c" and router.for_leaf(1) is sub
    assert router.levels(2) == {0: "a", 1: "c", 2: "b"}
    router.started()
    threading.Timer(0.3, lambda: router.finished("b", 10, 2, 0.5)).start()
    t0 = time.monotonic()
    assert router.drain(5) and time.monotonic() - t0 >= 0.25
    assert router.report() == {
        "b": {"calls": 1, "prompt_tokens": 10, "completion_tokens": 2, "cost_usd": 0.5}
    }
    router.started()
    assert router.drain(0.1) is False  # a call that never comes back does not hang the run


def test_a_session_node_shows_each_question_and_answer() -> None:
    t = make()
    t.on_event({"event": "node_begin", "node": "root", "parent": None, "depth": 0})
    t.on_event({"event": "node_start", "node": "root", "depth": 0})
    t.on_event({"event": "question", "node": "root", "number": 1})
    assert "thinking" in draw(t)
    t.on_event({"event": "answer", "node": "root", "number": 1, "status": "ok"})
    assert " done " in draw(t)
    t.on_event({"event": "question", "node": "root", "number": 2})
    t.on_event(
        {
            "event": "answer",
            "node": "root",
            "number": 2,
            "status": "budget_exhausted",
            "error": "out of steps",
        }
    )
    text = draw(t)
    assert "failed" in text and "out of steps" in text


def test_a_node_ended_without_a_container_does_not_count_as_one_going_down() -> None:
    """A child refused by a budget is begun and ended, never started: the root still holds
    the one container that is up."""
    t = make()
    t.on_event({"event": "run_start", "model": "m", "limits": {"max_containers": 4}})
    t.on_event({"event": "node_begin", "node": "root", "parent": None, "depth": 0})
    t.on_event({"event": "node_start", "node": "root", "depth": 0})
    t.on_event({"event": "node_begin", "node": "n2", "parent": "root", "depth": 1})
    t.on_event({"event": "node_end", "node": "n2", "status": "error", "error": "BudgetExhausted: max_nodes"})
    assert t.alive == 1
    assert "1 containers up" in draw(t) and "containers 3" in draw(t)


def test_a_model_call_that_waits_is_shown_with_its_limit() -> None:
    """A silent model must be visible: after a while the node says how long it has waited."""
    t = make()
    t.on_event({"event": "run_start", "model": "m/x", "limits": {"timeout_s": 600}})
    t.on_event({"event": "node_begin", "node": "root", "parent": None, "depth": 0})
    t.on_event({"event": "node_start", "node": "root", "depth": 0})
    t.on_event({"event": "lm_start", "node": "root", "purpose": "step", "call": 1, "timeout_s": 300.0})
    assert "waiting for the model" not in draw(t)  # a normal call is just "thinking"
    t.nodes["root"].call_since -= 45  # as if 45 s had passed
    assert "waiting for the model 45 s (limit 300 s)" in draw(t)
    t.on_event({"event": "lm_abandoned", "node": "root", "call": 1})
    assert "waiting for the model" not in draw(t)
