"""safe_text: untrusted text is shown, never acted on by a terminal or read as rich markup."""

from __future__ import annotations

import io
import json
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from rlm_sandbox.safe_text import json_text, line, text, visible, visible_data, write_answer
from rlm_sandbox.trace.view import TraceView

SEQUENCES = {
    "OSC 52 clipboard": "\x1b]52;c;cHduZWQ=\x07",
    "OSC 0 title": "\x1b]0;pwned\x07",
    "OSC 8 link": "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "CSI 2J": "\x1b[2J",
    "C1 CSI": "\x9b2J",
    "C1 OSC": "\x9d0;t\x9c",
    "NEL": "\x85",
    "DEL": "\x7f",
    "bidi override": "\u202egnp.exe\u202c",
    "bidi isolate": "\u2066x\u2069",
    "zero width": "a\u200bb",
    "line separator": "a\u2028b",
    "tag character": "\U000e0041",
    "lone surrogate": "\ud800",
    "carriage return": "safe\rEVIL",
}


def hidden(s: str) -> list[str]:
    """Characters a terminal could act on or that hide text (newline and tab are allowed)."""
    return [
        c
        for c in s
        if c not in "\n\t"
        and (
            ord(c) < 0x20
            or 0x7F <= ord(c) <= 0x9F
            or unicodedata.category(c) in {"Cf", "Cs", "Zl", "Zp", "Cn"}
        )
    ]


def test_every_sequence_is_shown_escaped() -> None:
    for name, seq in SEQUENCES.items():
        shown = visible(f"before {seq} after")
        assert not hidden(shown), name
        assert shown.startswith("before ") and shown.endswith(" after"), name
    assert visible("\x1b]0;t\x07") == "\\x1b]0;t\\x07"
    assert visible("\u202e") == "\\u202e" and visible("\U000e0041") == "\\U000e0041"
    assert visible("a\r\nb\tc") == "a\nb\tc", "line ends and tabs stay readable"
    assert visible("naïve 日本語 ✓") == "naïve 日本語 ✓", "ordinary text is untouched"


def test_rich_text_is_never_markup() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=200)
    console.print(text("[/] [link=https://evil.example]session expired[/link] \x1b]8;;x\x1b\\"))
    console.print(line(("label", "red"), ": [bold]not bold[/bold] \x1b[2J"))
    out = console.file.getvalue()
    assert "[/] [link=https://evil.example]session expired[/link]" in out
    assert "[bold]not bold[/bold]" in out and "\\x1b[2J" in out
    assert "\x1b]" not in out and "\x1b[2J" not in out


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=60))
def test_visible_leaves_nothing_hidden_and_is_idempotent(s: str) -> None:
    shown = visible(s)
    assert not hidden(shown)
    assert visible(shown) == shown


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=60))
def test_json_text_decodes_to_the_same_value_with_no_hidden_byte(s: str) -> None:
    out = json_text({"answer": s, "n": 1})
    assert json.loads(out) == {"answer": s, "n": 1}
    assert not hidden(out)


def test_json_text_escapes_what_json_dumps_leaves_raw() -> None:
    for s in ("\x7f", "\x9b", "\u202e", "\ud800", "\U000e0041", "\u2028"):
        out = json_text(s)
        assert out.isascii() and json.loads(out) == s, repr(s)
    assert json_text("naïve ✓") == '"naïve ✓"'


def test_visible_data_keeps_the_shape() -> None:
    ev = {
        "event": "cell",
        "node": "n\x1b1",
        "t": 1.5,
        "ok": True,
        "x": None,
        "l": ["\x9b", 2],
        "\u202ek": "v",
    }
    assert visible_data(ev) == {
        "event": "cell",
        "node": "n\\x1b1",
        "t": 1.5,
        "ok": True,
        "x": None,
        "l": ["\\x9b", 2],
        "\\u202ek": "v",
    }


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty
        self.buffer = io.BytesIO()

    def isatty(self) -> bool:
        return self.tty


def test_the_answer_is_exact_into_a_pipe_and_escaped_at_a_terminal() -> None:
    answer = "42 \x1b]52;c;eA==\x07 \u202eevil"
    pipe = _Stream(tty=False)
    write_answer(answer, pipe)
    assert pipe.buffer.getvalue() == (answer + "\n").encode()
    tty = _Stream(tty=True)
    write_answer(answer, tty)
    assert tty.buffer.getvalue() == b"42 \\x1b]52;c;eA==\\x07 \\u202eevil\n"
    lone = _Stream(tty=False)
    write_answer("a\ud800b", lone)  # cannot be encoded: escaped, not a crash
    assert lone.buffer.getvalue() == b"a\\ud800b\n"


def test_trace_view_lines_are_text_not_markup() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=300)
    view = TraceView(console)
    view.on_event(
        {"event": "run_start", "run": "r", "model": "[link=https://x]m[/link]\x1b]0;t\x07", "depth": 1}
    )
    view.on_event(
        {
            "event": "cell",
            "node": "root",
            "depth": 1,
            "step": 1,
            "code": "[/]",
            "output": "\x9b2J",
        }
    )
    view.on_event({"event": "error", "error": "[/] kernel said: \x1b]8;;https://evil\x1b\\"})
    view.on_event({"event": "cell", "node": "root", "depth": "not a number", "output": "\x9b2J"})
    out = console.file.getvalue()
    assert "? cell" in out and "(malformed: its 'depth' is a str)" in out  # shown for what it is
    assert "[link=https://x]m[/link]\\x1b]0;t\\x07" in out and "[/]" in out and "\\x9b2J" in out
    assert "\x1b]" not in out and "\x9b" not in out
