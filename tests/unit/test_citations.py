"""Citations: line lookup, the host's checks, the kernel's cite(), and how they flow up a run
(through the in-memory seam: no engine)."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox import RLM, RLMConfig
from rlm_sandbox.errors import ProtocolViolation
from rlm_sandbox.inputs import collect_inputs
from rlm_sandbox.kernel import protocol as P
from rlm_sandbox.kernel.repl import HostLink, Repl
from rlm_sandbox.rlm import citations as C
from rlm_sandbox.rlm.citations import Claim, excerpt, read_lines, verify
from rlm_sandbox.sandbox.fake import FakeBackend
from rlm_sandbox.sandbox.messages import citations_of
from rlm_sandbox.testing import ScriptedClient, generate_log

from ..helpers import with_cell_line

COUNT = 'How many lines contain "ERROR disk"?'


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")


# ---------------------------------------------------------------------------- read_lines


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_read_lines_in_one_pass_at_any_chunk_size(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(C, "READ_CHUNK", chunk)
    data = b"one\ntwo\r\n\nfour\nlast without newline"
    found, total = read_lines(io.BytesIO(data), [1, 2, 3, 5, 9])
    assert found == {1: b"one", 2: b"two\r", 3: b"", 5: b"last without newline"}
    assert total == 5  # line 9 is missing: the stream was read to its end
    found, _ = read_lines(io.BytesIO(b"a\nb\n"), [2, 3])
    assert found == {2: b"b"}  # a trailing newline does not make a line 3


def test_a_long_line_is_read_only_so_far(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"x" * 5000 + b"\nnext\n"
    found, _ = read_lines(io.BytesIO(data), [1, 2], max_line=100)
    assert found == {1: b"x" * 100, 2: b"next"}


def test_excerpt_keeps_the_quote_in_view() -> None:
    line = "a" * 1000 + "NEEDLE" + "b" * 1000
    shown = excerpt(line, 1000, 6, limit=50)
    assert "NEEDLE" in shown and len(shown) <= 50 and shown.startswith("…") and shown.endswith("…")
    assert excerpt("short", 0, 5) == "short"


# ---------------------------------------------------------------------------- verify


def claims(*items: tuple[Any, int, str]) -> list[Claim]:
    return [Claim(f, n, q, "root") for f, n, q in items]


def test_verify_against_files_on_disk(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("ok\nERROR disk full on db1\nok\n")
    (tmp_path / "b.log.gz").write_bytes(gzip.compress(b"x\nERROR disk gone\n"))
    inputs = collect_inputs([str(tmp_path)])
    out = verify(
        claims(
            ("a.log", 2, "ERROR disk"),
            ("b.log.gz", 2, "disk gone"),  # checked on the decompressed text
            ("a.log", 1, "ERROR disk"),  # a real line without the quote
            ("a.log", 99, "ERROR disk"),  # past the end
            ("nope.log", 1, "x"),
            (None, 1, "ok"),  # several files: which?
            ("a.log", 2, "  "),
            ("a.log", 2, "ERROR disk"),  # the same again: kept once
        ),
        inputs,
    )
    # sorted as diagnostics are: by input file, then line; those naming no input last
    by = {(c.file, c.line, c.quote): c for c in out}
    assert [(c.file, c.line, c.verified) for c in out] == [
        ("a.log", 1, False),
        ("a.log", 2, False),  # the empty quote ("  " sorts first)
        ("a.log", 2, True),
        ("a.log", 99, False),
        ("b.log.gz", 2, True),
        (None, 1, False),
        ("nope.log", 1, False),
    ]
    good = by[("a.log", 2, "ERROR disk")]
    assert good.text == "ERROR disk full on db1" and good.reason is None
    assert by[("a.log", 1, "ERROR disk")].reason == "the quote is not in line 1 of a.log"
    assert by[("a.log", 1, "ERROR disk")].text == "ok"
    assert by[("a.log", 99, "ERROR disk")].reason == "line 99 is past the end of a.log (3 lines)"
    assert by[("a.log", 99, "ERROR disk")].text is None
    assert "no input named 'nope.log'" in (by[("nope.log", 1, "x")].reason or "")
    assert "2 files: name the file" in (by[(None, 1, "ok")].reason or "")
    assert "empty" in (by[("a.log", 2, "  ")].reason or "")
    out = [good]
    assert out[0].to_json() == {
        "file": "a.log",
        "line": 2,
        "quote": "ERROR disk",
        "text": "ERROR disk full on db1",
        "verified": True,
        "reason": None,
    }


def test_a_file_changed_since_it_was_loaded_is_not_verified(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_text("ERROR disk\n")
    inputs = collect_inputs([str(path)])
    path.write_text("ERROR disk\nmore\n")
    (c,) = verify(claims((None, 1, "ERROR disk")), inputs)
    assert not c.verified and "changed on this host" in (c.reason or "")


def test_verify_a_text_given_in_memory() -> None:
    text = "first\n" + "x\n" * 100_000 + "the secret code is QX\n"
    out = verify(claims((None, 100_002, "QX"), (None, 2, "QX"), ("file.log", 1, "first")), text)
    assert [(c.line, c.verified) for c in out] == [(2, False), (100_002, True), (1, False)]
    assert out[1].file == "<context>" and out[1].text == "the secret code is QX"
    assert verify(claims((None, 1, "a")), [1, 2])[0].reason.startswith("a list input has no lines")


# ---------------------------------------------------------------------------- the kernel's side


def test_cite_checks_its_arguments_and_is_bounded() -> None:
    repl = Repl(HostLink(lambda *a: None))
    repl.cite("a.log", 3, "quote")
    repl.cite(None, 1, "q")
    for bad, kind in (
        (("a", 0, "q"), ValueError),
        (("a", True, "q"), TypeError),
        (("a", 1.0, "q"), TypeError),
        ((3, 1, "q"), TypeError),
        (("a", 1, None), TypeError),
        (("a", 1, "q" * (P.MAX_CITE_QUOTE + 1)), ValueError),
    ):
        with pytest.raises(kind):
            repl.cite(*bad)
    assert repl.take_citations() == [["a.log", 3, "quote"], [None, 1, "q"]]
    assert repl.take_citations() == []
    for i in range(P.MAX_CITATIONS):
        repl.cite(None, i + 1, "q")
    with pytest.raises(ValueError, match="at most"):
        repl.cite(None, 1, "q")


def test_the_host_refuses_citations_that_break_the_bounds() -> None:
    assert citations_of(b'[["a", 1, "q"], [null, 2, "r"]]') == [("a", 1, "q"), (None, 2, "r")]
    for bad in (b"not json", b'[["a", 0, "q"]]', b'[["a", "1", "q"]]', b'{"a": 1}', b'[["a", 1]]'):
        with pytest.raises(ProtocolViolation):
            citations_of(bad)
    too_many = ("[" + ",".join(['[null, 1, "q"]'] * (P.MAX_CITATIONS + 1)) + "]").encode()
    with pytest.raises(ProtocolViolation):
        citations_of(too_many)


# ---------------------------------------------------------------------------- through a run


def logs_dir(tmp_path: Path) -> tuple[Path, int]:
    root = tmp_path / "logs"
    (root / "nested").mkdir(parents=True)
    a = generate_log(root / "a.log", 30_000, seed=11)
    b = generate_log(None, 30_000, seed=12)
    with gzip.open(root / "nested" / "b.log.gz", "wt") as f:
        f.write(b.text or "")
    return root, a.disk_errors + b.disk_errors


def test_a_directory_is_counted_with_verified_and_refused_citations(tmp_path: Path) -> None:
    root, truth = logs_dir(tmp_path)
    policy = with_cell_line('cite("a.log", 1, "this is not in line 1")')
    rlm = RLM(root_lm=ScriptedClient(policy), backend=FakeBackend())
    result = rlm.run(context=root, task=COUNT)
    assert result.status == "ok", result.error
    assert result.answer == str(truth)
    good = [c for c in result.citations if c.verified]
    bad = [c for c in result.citations if not c.verified]
    assert {c.file for c in good} == {"a.log", "nested/b.log.gz"}
    assert all("ERROR disk" in (c.text or "") for c in good)
    assert [(c.file, c.line, c.reason) for c in bad] == [("a.log", 1, "the quote is not in line 1 of a.log")]
    assert result.to_json()["citations"][0].keys() == {"file", "line", "quote", "text", "verified", "reason"}


def test_children_cite_in_the_roots_terms_and_their_citations_flow_up(tmp_path: Path) -> None:
    root, truth = logs_dir(tmp_path)
    rlm = RLM(root_lm=ScriptedClient(), backend=FakeBackend(), config=RLMConfig(depth=2, pool_size=0))
    result = rlm.run(context=root, task=COUNT)
    assert result.status == "ok" and result.answer == str(truth)
    from_children = [c for c in result.citations if c.node != "root"]
    assert from_children and all(c.verified for c in result.citations)
    assert {c.file for c in from_children} == {"a.log", "nested/b.log.gz"}


def test_a_failed_child_hands_back_no_citations(tmp_path: Path) -> None:
    """A child that cites and then fails gives its parent nothing, its evidence included."""
    (tmp_path / "a.log").write_text("ERROR disk one\n")
    child_cell = 'cite(None, 1, "ERROR disk")\nraise SystemExit("the child gives up")'

    def policy(request: dict[str, Any]) -> str:
        msgs = request.get("messages") or []
        system = str(msgs[0].get("content")) if msgs else ""
        steps = sum(1 for m in msgs if m.get("role") == "assistant")
        if "depth 0 of" in system:
            if steps == 0:
                return '```repl\ntry:\n    llm_query("x")\nexcept Exception as e:\n    print("child failed", e)\n```'
            return "FINAL(done)"
        if "depth 1 of" in system:
            return f"```repl\n{child_cell}\n```"  # never finishes: out of steps, no answer
        return "leaf"

    rlm = RLM(root_lm=ScriptedClient(policy), backend=FakeBackend(), config=RLMConfig(depth=2, max_steps=2))
    result = rlm.run(context=tmp_path / "a.log", task="t")
    assert result.status == "ok" and result.answer == "done"
    assert result.citations == []


def test_citations_need_an_answer() -> None:
    def policy(request: dict[str, Any]) -> str:
        return '```repl\ncite(None, 1, "a")\n```'  # cites, never answers

    rlm = RLM(
        root_lm=ScriptedClient(policy),
        backend=FakeBackend(),
        config=RLMConfig(max_steps=1, fallback_answer=False),
    )
    result = rlm.run(context="a\n", task="t")
    assert result.status == "budget_exhausted" and result.citations == []


def test_a_session_checks_each_questions_citations(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("alpha\nbeta\n")
    step = {"n": 0}

    def policy(request: dict[str, Any]) -> str:
        last = str((request.get("messages") or [{}])[-1].get("content"))
        if "Output of code block" in last:
            return "FINAL(ok)"
        step["n"] += 1
        word = "alpha" if step["n"] == 1 else "beta"
        line = 1 if word == "alpha" else 2
        return f'```repl\ncite(None, {line}, "{word}")\n```'

    rlm = RLM(root_lm=ScriptedClient(policy), backend=FakeBackend())
    with rlm.session(context=tmp_path / "a.log") as s:
        first = s.ask("first?")
        second = s.ask("second?")
    assert [(c.line, c.verified) for c in first.citations] == [(1, True)]
    assert [(c.line, c.verified) for c in second.citations] == [(2, True)]
    assert first.citations[0].file == str(tmp_path / "a.log")


def test_the_first_prompt_lists_the_files(tmp_path: Path) -> None:
    root, _ = logs_dir(tmp_path)
    client = ScriptedClient()
    RLM(root_lm=client, backend=FakeBackend()).run(context=root, task=COUNT)
    first = client.requests[0]["messages"][1]["content"]
    assert "a dict of 2 input files" in first
    assert "'a.log':" in first and "'nested/b.log.gz':" in first and "gzip-decompressed" in first
    assert "lines" in first and "In all: 2 files" in first
    system = client.requests[0]["messages"][0]["content"]
    assert "cite(path, line, quote)" in system


def test_stdin_spool_is_removed_after_an_api_run() -> None:
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    stream = io.BytesIO(b"ERROR disk a\nok\n")
    result = RLM(root_lm=ScriptedClient(), backend=FakeBackend()).run(context=stream, task=COUNT)
    assert result.status == "ok" and result.answer == "1"
    assert [(c.file, c.line, c.verified) for c in result.citations] == [("<stream>", 1, True)]
    after = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    assert not {n for n in after - before if n.startswith("rlm-sandbox-stdin-")}


def test_the_trace_carries_the_citations_and_trace_show_lists_them(tmp_path: Path) -> None:
    from rich.console import Console

    from rlm_sandbox.trace import render
    from rlm_sandbox.trace.tree import build, load

    root, _ = logs_dir(tmp_path)
    trace = tmp_path / "t.jsonl"
    policy = with_cell_line('cite("a.log", 1, "not there")')
    result = RLM(
        root_lm=ScriptedClient(policy), backend=FakeBackend(), config=RLMConfig(trace=str(trace))
    ).run(context=root, task=COUNT)
    run = load(trace)
    assert run.citations == [c.to_json() for c in result.citations]
    console = Console(record=True, width=200)
    console.print(render.show(run))
    text = console.export_text()
    verified = sum(c.verified for c in result.citations)
    assert f"citations: {verified} verified, 1 refused" in text
    assert "✗ a.log:1: the quote is not in line 1 of a.log" in text
    good = next(c for c in result.citations if c.verified)
    assert f"✓ {good.file}:{good.line}: {good.text}" in text
    # a trace is untrusted: malformed citations are left out, never a crash
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    events[-1]["citations"] = [{"line": "1"}, "x", None, {"file": 3, "line": 2, "verified": "yes"}]
    assert build(events).citations == [
        {"file": "3", "line": 2, "quote": "", "text": None, "verified": False, "reason": None}
    ]
