"""What the model is told of its input (rlm/context.py) and the stable name of a request
(rlm/digest.py): pure functions, no sandbox."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.rlm.context import (
    ContextLoader,
    HostContextInfo,
    describe_context,
    host_context_info,
    preview,
)
from rlm_sandbox.rlm.digest import request_digest


def test_the_host_knows_the_size_of_in_memory_inputs_and_files(tmp_path: Path) -> None:
    assert host_context_info("héllo") == HostContextInfo("str", 5)
    assert host_context_info(b"\x00\x01") == HostContextInfo("bytes", 2)
    assert host_context_info([1, 2, 3]) == HostContextInfo("list", 3)
    assert host_context_info({"a": 1}) == HostContextInfo("dict", 1)
    path = tmp_path / "in.txt"
    path.write_text("héllo")  # 6 bytes: a file's size only approximates its characters
    assert host_context_info(path) == HostContextInfo("str", 6, approximate=True)
    assert host_context_info(tmp_path / "missing.txt") is None
    assert host_context_info(io.BytesIO(b"stream")) is None


def test_each_kind_of_input_is_described_by_its_shape() -> None:
    def of(context: Any, info: Any = None) -> str:
        return describe_context(context, info if info is not None else host_context_info(context))

    assert of("x" * 1234) == "a str of 1,234 characters"
    assert of(b"abc") == "a bytes object of 3 bytes"
    assert of(["ab", "c" * 30]) == "a list of 2 items (sizes of the first items in characters: [2, 30])"
    assert of({f"k{i}": i for i in range(25)}).startswith("a dict with 25 keys (first keys: ['k0', 'k1'")
    assert "'k19']" in of({f"k{i}": i for i in range(25)}) and "k20" not in of(
        {f"k{i}": i for i in range(25)}
    )
    assert of(Path("big.log"), HostContextInfo("str", 2_000_000, approximate=True)) == (
        "a str of about 2,000,000 characters"
    )
    assert of(io.BytesIO(b"x"), None) == "a BytesIO"
    assert describe_context(io.BytesIO(b"x"), HostContextInfo("str", None)) == "a str"  # type: ignore[arg-type]


def test_the_preview_shows_the_start_of_the_input(tmp_path: Path) -> None:
    assert preview("abc") == "It begins with:\n```\nabc\n```\n"
    assert preview("x" * 1000).count("x") == 300
    assert preview(b"\xffok") == "It begins with:\n```\n\ufffdok\n```\n"
    path = tmp_path / "in.txt"
    path.write_text("file head")
    assert "file head" in preview(path)
    assert preview(tmp_path / "missing") == ""
    assert preview("") == "" and preview([1, 2]) == ""


def test_a_failed_background_load_is_raised_once_by_join() -> None:
    class Broken:
        def load_context(self, context: Any, progress: Any = None) -> None:
            raise OSError("the sandbox went away")

    loader = ContextLoader(Broken(), "abc")
    with pytest.raises(OSError, match="went away"):
        loader.join()
    loader.join()  # raised once; the node's later waits go through


def test_the_background_load_reports_progress() -> None:
    seen: list[tuple[int, int]] = []

    class Sandbox:
        def load_context(self, context: Any, progress: Any = None) -> None:
            progress(len(context), len(context))

    ContextLoader(Sandbox(), "abcd", lambda sent, size: seen.append((sent, size))).join()
    assert seen == [(4, 4)]


# ---- request digests


def _messages(budgets: str, task: str = "Task: t") -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"You are one node.\n{budgets}\nmore"},
        {"role": "user", "content": task},
    ]


def test_the_digest_ignores_the_volatile_budgets_line_of_the_system_prompt() -> None:
    a = request_digest(_messages("Budgets: 12 steps for this node; 499 model calls left."))
    b = request_digest(_messages("Budgets: 12 steps for this node; 312 model calls left."))
    assert a == b and len(a) == 64


def test_the_digest_tells_different_requests_apart() -> None:
    base = _messages("Budgets: x")
    assert request_digest(base) != request_digest(_messages("Budgets: x", task="Task: other"))
    user_budget = [base[0], {"role": "user", "content": "Budgets: 1"}]
    other_budget = [base[0], {"role": "user", "content": "Budgets: 2"}]
    assert request_digest(user_budget) != request_digest(other_budget)  # only the system line is volatile
    assert request_digest(base) == request_digest([dict(m) for m in base])
