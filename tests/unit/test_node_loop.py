"""One node's loop (rlm/node.py) through the seam: what the model is told after each step (the
nudge, FINAL_VAR notes, cut output, errors), how replies are run, what the system prompt says
of budgets, helpers and the input, and where llm_query goes."""

from __future__ import annotations

from typing import Any

from rlm_sandbox.rlm.conversation import NO_CODE_NOTE
from rlm_sandbox.testing import sequence_policy

from ..helpers import cells_then_final, root_then_policy
from .seam import is_node, last_user, repl


def system_of(h: Any, index: int = 0) -> str:
    return h.client.requests[index]["messages"][0]["content"]


# ---- what the model reads after a step


def test_a_reply_without_code_gets_the_nudge(seam) -> None:
    h = seam(sequence_policy("Let me think about the input first.", "FINAL(ok)"))
    result = h.run("abc")
    assert (result.answer, result.steps) == ("ok", 2)
    assert NO_CODE_NOTE in last_user(h.client.requests[1])
    assert h.backend.started[0].cells == []


def test_final_var_of_a_missing_variable_gets_a_note_and_the_run_goes_on(seam) -> None:
    h = seam(sequence_policy("FINAL_VAR(result)", repl("result = 'found'"), "FINAL_VAR(result)"))
    result = h.run("abc")
    assert (result.status, result.answer, result.steps) == ("ok", "found", 3)
    note = last_user(h.client.requests[1])
    assert "FINAL_VAR(result): there is no variable named 'result'" in note


def test_final_var_of_something_that_is_not_a_name_gets_a_note(seam) -> None:
    h = seam(sequence_policy("FINAL_VAR(the answer)", "FINAL(fine)"))
    assert h.run("abc").answer == "fine"
    assert "FINAL_VAR needs a variable name, got 'the answer'" in last_user(h.client.requests[1])


def test_long_cell_output_is_cut_to_the_output_limit(seam) -> None:
    h = seam(cells_then_final("print('x' * 50_000)"), output_limit=1000)
    h.run("abc")
    feedback = last_user(h.client.requests[1])
    assert "[49000 characters truncated]" in feedback
    assert len(feedback) < 1800
    assert len(h.named("cell")[0]["output"]) < 1100  # the trace keeps a cut copy as well


def test_a_cell_error_is_shown_to_the_model_and_the_loop_goes_on(seam) -> None:
    h = seam(cells_then_final("1 / 0", "print('next')"))
    result = h.run("abc")
    assert (result.status, result.steps) == ("ok", 3)
    feedback = last_user(h.client.requests[1])
    assert 'File "<cell>", line 1' in feedback and "ZeroDivisionError: division by zero" in feedback
    assert h.named("cell")[0]["error"] == "ZeroDivisionError: division by zero"


def test_the_feedback_counts_the_steps_left_and_the_last_says_so(seam) -> None:
    h = seam(cells_then_final("print(1)", "print(2)", final="FINAL(x)"), max_steps=3)
    h.run("abc")
    assert "Step 1 of 3 done (2 left)" in last_user(h.client.requests[1])
    assert "Step 2 of 3 done (1 left)" in last_user(h.client.requests[2])
    h2 = seam(cells_then_final("print(1)", final="FINAL(x)"), max_steps=1, fallback_answer=False)
    h2.run("abc")
    assert "You have no steps left" in last_user(h2.client.requests[1])


# ---- how a reply is run


def test_blocks_run_in_order_and_final_in_code_stops_the_rest(seam) -> None:
    reply = "```repl\nprint('one')\n```\n```repl\nFINAL('from code')\n```\n```repl\nprint('never')\n```"
    h = seam(sequence_policy(reply))
    result = h.run("abc")
    assert (result.answer, result.steps) == ("from code", 1)
    assert h.backend.started[0].cells == ["print('one')\n", "FINAL('from code')\n"]
    assert [(e["index"], e["output"]) for e in h.named("cell")] == [(0, "one"), (1, "(no output)")]


def test_each_blocks_output_is_labelled_by_its_number(seam) -> None:
    reply = "```repl\nprint('a')\n```\nand\n```python\nprint('b')\n```\n```bash\nls\n```"
    h = seam(sequence_policy(reply, "FINAL(done)"))
    h.run("abc")
    feedback = last_user(h.client.requests[1])
    assert "Output of code block 1:\n```\na\n```" in feedback
    assert "Output of code block 2:\n```\nb\n```" in feedback
    assert len(h.backend.started[0].cells) == 2  # the bash block is not run


def test_the_last_expression_of_a_cell_is_echoed(seam) -> None:
    h = seam(cells_then_final("x = 20\nx + 22"))
    h.run("abc")
    assert h.named("cell")[0]["output"] == "42"


def test_a_cell_cannot_lose_context_or_the_helpers(seam) -> None:
    h = seam(cells_then_final("context = None\nllm_query = 1", "print(len(context), callable(llm_query))"))
    h.run("abcd")
    assert h.named("cell")[1]["output"] == "4 True"


def test_a_final_answer_in_prose_wins_over_the_feedback(seam) -> None:
    h = seam(sequence_policy("I checked everything.\n\n**FINAL(it is 7)**"))
    result = h.run("abc")
    assert (result.answer, result.steps, result.lm_calls) == ("it is 7", 1, 1)


# ---- the system prompt and the first step


def test_the_budget_note_states_what_is_left(seam) -> None:
    h = seam(cells_then_final(), max_lm_calls=50, max_tokens=10_000, max_cost=1.0, timeout=600)
    h.run("abc")
    budgets = next(line for line in system_of(h).splitlines() if line.startswith("Budgets:"))
    assert budgets.startswith("Budgets: 12 steps for this node; 50 model calls left for the whole run; ")
    assert "10000 tokens left; $1.0000 left; " in budgets and budgets.endswith(" s of wall time left.")


def test_without_limits_the_note_says_so(seam) -> None:
    h = seam(cells_then_final(), max_lm_calls=None, timeout=None, max_steps=4)
    h.run("abc")
    assert "Budgets: 4 steps for this node; no other limits." in system_of(h)


def test_a_child_is_told_what_its_elders_left_it(seam) -> None:
    def child(request: dict[str, Any]) -> str:
        return "FINAL(c)" if is_node(request) else "leaf"

    root = cells_then_final("print(llm_query('go'))")
    h = seam(root_then_policy(root, child), depth=2, pool_size=0, max_lm_calls=20)
    h.run("abc")
    child_system = next(r for r in h.client.requests if "depth 1 of" in r["messages"][0]["content"])
    assert (
        "20 model calls left" in system_of(h)
        and "19 model calls left" in child_system["messages"][0]["content"]
    )


def test_the_helpers_listed_follow_the_depth_and_recursion(seam) -> None:
    flat = seam(cells_then_final())
    flat.run("abc")
    assert "rlm_query" not in system_of(flat)
    assert "depth 0 of at most 0" in system_of(flat) and "plain language model" in system_of(flat)
    deep = seam(cells_then_final(), depth=2)
    deep.run("abc")
    assert "`rlm_query(prompt)` / `rlm_query_batched(prompts)`: always start child RLM nodes." in system_of(
        deep
    )
    assert "Your llm_query calls start child RLM nodes" in system_of(deep)
    explicit = seam(cells_then_final(), depth=2, recursion="explicit")
    explicit.run("abc")
    assert "(your `llm_query` calls are plain model calls)" in system_of(explicit)


def test_the_input_is_described_and_previewed_never_sent(seam) -> None:
    h = seam(cells_then_final("print(type(context).__name__, len(context))"))
    h.run(["alpha", "beta", "gamma"])
    system, first = h.client.requests[0]["messages"][:2]
    assert "a list of 3 items (sizes of the first items in characters: [5, 4, 5])" in system["content"]
    assert first["content"].startswith("Task: t\n")
    assert h.named("cell")[0]["output"] == "list 3"
    text = seam(cells_then_final())
    text.run("first line\n" + "x" * 10_000)
    opening = text.client.requests[0]["messages"][1]["content"]
    assert "It begins with:\n```\nfirst line\n" in opening and "x" * 400 not in opening


def test_dict_and_bytes_inputs_keep_their_type_in_the_repl(seam) -> None:
    h = seam(
        cells_then_final(
            "print(type(context).__name__, sorted(context) if isinstance(context, dict) else context)"
        )
    )
    h.run({"b": 1, "a": 2})
    assert "a dict with 2 keys (first keys: ['b', 'a'])" in system_of(h)
    assert h.named("cell")[0]["output"] == "dict ['a', 'b']"
    raw = seam(cells_then_final("print(type(context).__name__, context[:2])"))
    raw.run(b"\x00\x01\x02")
    assert "a bytes object of 3 bytes" in system_of(raw)
    assert raw.named("cell")[0]["output"] == "bytes b'\\x00\\x01'"


# ---- where llm_query goes


def test_a_leaf_llm_query_goes_to_the_sub_model(seam) -> None:
    h = seam(cells_then_final("print(llm_query('hello'))"), sub_policy=sequence_policy("hi from sub"))
    result = h.run("abc")
    assert h.named("cell")[0]["output"] == "hi from sub"
    assert set(result.models) == {"scripted", "scripted-sub"} and result.models["scripted-sub"]["calls"] == 1
    assert h.named("run_start")[0]["levels"] == {0: "scripted", 1: "scripted-sub"}
    (sub,) = h.named("sub_call")
    assert (sub["kind"], sub["prompt_chars"]) == ("lm", 5)
    assert h.calls("sub_call")[0]["model"] == "scripted-sub"


def test_batched_answers_come_back_in_order(seam) -> None:
    def echo(request: dict[str, Any]) -> str:
        return request["messages"][-1]["content"].upper()

    h = seam(cells_then_final("print(llm_query_batched(['a', 'b', 'c', 'd']))"), sub_policy=echo)
    h.run("abc")
    assert h.named("cell")[0]["output"] == "['A', 'B', 'C', 'D']"
    assert len(h.named("sub_call")) == 4


def test_explicit_recursion_starts_children_only_for_rlm_query(seam) -> None:
    def child(request: dict[str, Any]) -> str:
        return "FINAL(from child)" if is_node(request) else "from leaf"

    root = cells_then_final("print(llm_query('a'), '|', rlm_query('b'))")
    h = seam(root_then_policy(root, child), depth=2, pool_size=0, recursion="explicit")
    result = h.run("abc")
    assert h.named("cell")[0]["output"] == "from leaf | from child"
    assert [e["kind"] for e in h.named("sub_call")] == ["lm", "rlm"]
    assert (result.nodes, result.max_depth_reached) == (2, 2)


def test_rlm_query_at_the_last_level_is_a_plain_call(seam) -> None:
    h = seam(cells_then_final("print(rlm_query('q'))"), sub_policy=sequence_policy("plain"))
    result = h.run("abc")
    assert h.named("cell")[0]["output"] == "plain"
    assert (result.nodes, [e["kind"] for e in h.named("sub_call")]) == (1, ["lm"])
