"""Sessions: a follow-up question uses the REPL of the first; the container goes at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.errors import SandboxClosed
from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig

from ..conftest import containers_of

pytestmark = pytest.mark.docker


def two_questions(request: dict[str, Any]) -> str:
    msgs = request.get("messages") or []
    last = msgs[-1]["content"]
    if "Question: And how many are left" in last:
        return "```repl\nleft = total - 10\nprint(left)\n```"
    if msgs[-2:-1] and "left = total - 10" in msgs[-2]["content"]:
        return "FINAL_VAR(left)"
    if len(msgs) == 2:  # the first question
        return "```repl\ntotal = len(context.split())\nprint(total)\n```"
    return "FINAL_VAR(total)"


def test_a_follow_up_uses_variables_of_the_first_answer(scripted, run_id: str, tmp_path: Path) -> None:
    server = scripted(two_questions)
    trace = tmp_path / "s.jsonl"
    rlm = RLM(
        model=server.model_name,
        config=RLMConfig(api_base=server.url, trace=str(trace)),
        api_key=server.api_key,
    )
    with rlm.session(context="a b c " * 10, run_id=run_id) as s:
        first = s.ask("How many words are there?")
        assert first.status == "ok" and first.answer == "30", first
        assert len(containers_of(run_id)) == 1
        second = s.ask("And how many are left after removing 10?")
        assert second.status == "ok" and second.answer == "20", second
        assert len(containers_of(run_id)) == 1  # the same container served both
        assert s.totals()["questions"] == 2 and s.totals()["lm_calls"] == first.lm_calls + second.lm_calls
    assert containers_of(run_id) == []
    with pytest.raises(SandboxClosed):
        s.ask("one more?")
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [e["event"] for e in events].count("node_start") == 1
    assert [e["number"] for e in events if e["event"] == "answer"] == [1, 2]
    assert events[-1]["event"] == "run_end" and events[-1]["questions"] == 2


def test_the_container_goes_when_the_session_ends_by_an_exception(scripted, run_id: str) -> None:
    server = scripted(two_questions)
    rlm = RLM(model=server.model_name, config=RLMConfig(api_base=server.url), api_key=server.api_key)
    with pytest.raises(RuntimeError, match="boom"), rlm.session(context="x y", run_id=run_id) as s:
        s.ask("How many words are there?")
        assert len(containers_of(run_id)) == 1
        raise RuntimeError("boom")
    assert containers_of(run_id) == []


def test_chat_answers_line_by_line_with_cost_and_trace(scripted, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rlm_sandbox.cli.main import main

    server = scripted(two_questions)
    src = tmp_path / "words.txt"
    src.write_text("a b c " * 10)
    trace = tmp_path / "chat.jsonl"
    r = CliRunner().invoke(
        main,
        [
            "chat",
            "--model",
            server.model_name,
            "--api-base",
            server.url,
            "-i",
            str(src),
            "--trace",
            str(trace),
        ],
        input="How many words are there?\nAnd how many are left after removing 10?\n/cost\n/trace\n/quit\n",
        env={"OPENAI_API_KEY": server.api_key},
    )
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if line]
    assert lines[:2] == ["30", "20"]
    assert lines[2].startswith("2 questions,") and lines[3] == str(trace)
    assert json.loads(trace.read_text().splitlines()[-1])["event"] == "run_end"
