"""What a node says to its model: the system prompt, the first step, the feedback after each
step. Pure functions over plain values, so the wording is tested without a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlm_sandbox.rlm.parsing import truncate_output
from rlm_sandbox.rlm.prompts import render

Message = dict[str, str]

NO_CODE_NOTE = (
    "(your reply had no ```repl code block and no FINAL(...)/FINAL_VAR(...): "
    "write code to explore `context`, or finish)"
)


@dataclass(frozen=True)
class PromptFacts:
    """What the system prompt states about one node: where it is and what it may use."""

    context_desc: str
    depth: int
    max_depth: int  # levels of RLM nodes in the run
    max_steps: int
    output_limit: int
    recursion: str = "auto"
    tools_description: str = ""
    schema: str | None = None  # the answer's JSON Schema, as text
    budget_note: str = "no other limits."

    @property
    def deeper(self) -> bool:
        return self.depth + 1 < self.max_depth


def budget_note(
    *,
    max_lm_calls: int | None,
    lm_calls: int,
    max_tokens: int | None,
    tokens: int,
    max_cost: float | None,
    cost_usd: float,
    wall_left: float | None,
) -> str:
    """What is left of the run's budgets, as the model is told at the start of a node."""
    parts = []
    if max_lm_calls:
        parts.append(f"{max_lm_calls - lm_calls} model calls left for the whole run")
    if max_tokens:
        parts.append(f"{max_tokens - tokens} tokens left")
    if max_cost:
        parts.append(f"${max_cost - cost_usd:.4f} left")
    if wall_left is not None:
        parts.append(f"{wall_left:.0f} s of wall time left")
    return "; ".join(parts) + "." if parts else "no other limits."


def _extras(facts: PromptFacts) -> str:
    """The REPL's optional helpers, listed only when they exist for this node."""
    lines = []
    if facts.deeper:
        lines.append(
            "\n  - `rlm_query(prompt)` / `rlm_query_batched(prompts)`: always start child RLM nodes"
            + (" (your `llm_query` calls are plain model calls)." if facts.recursion == "explicit" else ".")
        )
    lines.append(
        "\n  - `llm_query(prompt, output=schema)`: with `output=` (a JSON Schema dict, or dict/list/"
        "int/str) the answer comes back as parsed, checked JSON."
    )
    if facts.tools_description:
        lines.append(
            "\n  - Tools (they run outside the REPL; JSON arguments and results):\n" + facts.tools_description
        )
    return "".join(lines)


def system_prompt(facts: PromptFacts) -> str:
    deeper = facts.deeper
    return render(
        "system",
        context_desc=facts.context_desc,
        output_limit=facts.output_limit,
        helper_kind="RLM (it gets its own REPL with your prompt as its `context`)"
        if deeper
        else "language model",
        depth=facts.depth,
        max_depth=facts.max_depth - 1,
        depth_note=(
            "Your llm_query calls start child RLM nodes, each with its own REPL."
            if deeper
            else "Your llm_query calls go to a plain language model."
        ),
        steps_left=facts.max_steps,
        extras=_extras(facts),
        answer_note=(
            "\n- Your final answer must be JSON matching this JSON Schema (FINAL(a dict or list) "
            f"sends it as JSON):\n{facts.schema}"
            if facts.schema is not None
            else ""
        ),
        budget_note=facts.budget_note,
    )


def opening(facts: PromptFacts, task: str, preview: str) -> list[Message]:
    """The conversation a node starts with: the system prompt and the task."""
    return [
        {"role": "system", "content": system_prompt(facts)},
        {
            "role": "user",
            "content": render("first_step", task=task, context_desc=facts.context_desc, preview=preview),
        },
    ]


def step_feedback(outputs: list[str], step: int, max_steps: int) -> Message:
    """What the model sees after a step: its cells' outputs, and how many steps are left."""
    body = "\n\n".join(outputs or [NO_CODE_NOTE])
    template = "next_step" if step < max_steps else "last_step"
    content = render(template, outputs=body, step=step, max_steps=max_steps, steps_left=max_steps - step)
    return {"role": "user", "content": content}


def followup(question: str) -> Message:
    """A session's next question, in the same conversation."""
    return {"role": "user", "content": render("followup", task=question)}


def format_result(result: Any, limit: int) -> str:
    """A cell's outcome as the model reads it: stdout, stderr, the traceback, cut to ``limit``."""
    parts = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.error:
        tb = result.traceback or result.error
        parts.append(tb.rstrip("\n") if result.ename != "CellTimeoutError" else f"[{result.error}]")
    text = "\n".join(parts) if parts else "(no output)"
    return truncate_output(text, limit)


def cell_output_block(index: int, shown: str) -> str:
    return f"Output of code block {index + 1}:\n```\n{shown}\n```"
