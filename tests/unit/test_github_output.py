"""``--format github``: annotation escaping, command stopping, the step summary's Markdown."""

from __future__ import annotations

import re

import pytest

from rlm_sandbox.cli import github as G
from rlm_sandbox.inputs import InputFile, InputSet
from rlm_sandbox.rlm.citations import Citation
from rlm_sandbox.rlm.result import RLMResult


def test_escaping_follows_githubs_toolkit() -> None:
    assert G.escape_data("100% done\r\nnext::x") == "100%25 done%0D%0Anext::x"
    assert G.escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_an_annotation_is_one_line_whatever_the_text() -> None:
    hostile = "ok\n::error file=x::forged\r\n::add-mask::secret,\x1b[31mred"
    line = G.annotation("notice", hostile, file="logs/a,b:c.log", line=12, title="t:1,2")
    assert "\n" not in line and "\r" not in line
    assert line.startswith("::notice file=logs/a%2Cb%3Ac.log,line=12,title=t%3A1%2C2::")
    assert line.count("::") == 2 + hostile.count("::")  # the text's '::' stay inside the message
    assert G.printable("a\x1b[31mb\tc\nd", 100) == "a\\x1b[31mb c d"  # escapes shown, not acted on
    assert G.printable("abc\u202edef", 100) == "abc\\u202edef"  # a bidi override too


def test_annotations_of_citations_point_at_the_files(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    (tmp_path / "logs").mkdir()
    path = tmp_path / "logs" / "a.log"
    path.write_text("x\n")
    inputs = InputSet(
        [
            InputFile("a.log", str(path), path=path),
            InputFile("<stdin>", "-"),
        ],
        stdin=object(),  # type: ignore[arg-type]
    )
    cites = [
        Citation("a.log", 1, "x", "x", True, None),
        Citation("a.log", 9, "y", None, False, "line 9 is past the end of a.log (1 lines)"),
        Citation("<stdin>", 2, "z", "z here", True, None),
    ]
    lines = G.annotations(cites, inputs, ["skipped 1 hidden file(s)"])
    assert lines[0] == "::notice file=logs/a.log,line=1,title=rlm-sandbox%3A cited::x"
    assert lines[1].startswith(
        "::warning file=logs/a.log,line=9,title=rlm-sandbox%3A citation refused::line 9"
    )
    assert lines[2] == "::notice title=rlm-sandbox%3A cited::<stdin>:2: z here"  # no file to point at
    assert lines[3] == "::warning title=rlm-sandbox::skipped 1 hidden file(s)"


def test_commands_are_resumed_however_the_block_ends(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), G.commands_stopped():
        print("::error::from the model")
        raise RuntimeError("boom")
    out = capsys.readouterr().out.splitlines()
    token = out[0].removeprefix("::stop-commands::")
    assert re.fullmatch(r"[0-9a-f]{32}", token) and out[-1] == f"::{token}::"
    assert out[1] == "::error::from the model"  # printed while commands were off


def result(**kw) -> RLMResult:
    base = dict(
        answer="173",
        status="ok",
        error=None,
        steps=2,
        lm_calls=5,
        tokens={"prompt": 100, "completion": 20},
        cost_usd=0.0123,
        wall_s=3.2,
        nodes=3,
        containers=3,
        max_depth_reached=2,
        trace=None,
    )
    return RLMResult(**(base | kw))


def test_the_summary_keeps_untrusted_text_in_code() -> None:
    answer = "```\n# injected heading\n![img](https://evil.example/x.png)\n````"
    cites = [
        Citation("a|b.log", 3, "q", "text with | pipe and `ticks`", True, None),
        Citation("c.log", 4, "q", None, False, "the quote is not in line 4 of c.log"),
    ]
    md = G.summary("How many?", result(answer=answer, citations=cites, lm_cache_hits=2, warnings=["w"]))
    fence = "`````"  # longer than the longest backtick run of the answer
    assert f"{fence}text\n{answer}\n{fence}" in md
    assert "| ok | 5 | 2 | 120 | $0.0123 | 3 | 3 | 2 | 3.2 s |" in md
    assert "**Citations** (1 verified, 1 refused)" in md
    row = next(line for line in md.splitlines() if "pipe" in line)
    assert row.count(" | ") == 3 and "\\|" in row and "`` text with \\| pipe and `ticks` ``" in row
    assert "❌ ` the quote is not in line 4 of c.log `" in md
    assert "**Warnings**" in md


def test_the_summary_is_appended(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "summary.md"
    path.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(path))
    assert G.append_summary("t", result()) == str(path)
    text = path.read_text()
    assert text.startswith("earlier step\n### rlm-sandbox")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert G.append_summary("t", result()) is None


def test_annotations_are_capped_with_a_note() -> None:
    cites = [Citation("<context>", n, "q", "q", True, None) for n in range(1, G.ANNOTATED_CITATIONS + 8)]
    lines = G.annotations(cites)
    assert len(lines) == G.ANNOTATED_CITATIONS + 1
    assert lines[-1] == "::notice title=rlm-sandbox::7 more citations: see the step summary or --json"
