"""Escape sequences and markup from models, cells, kernels and traces (issue 13, finding 4).

A scripted model writes a cell whose code, output and final answer carry terminal control
sequences (OSC 52 clipboard write, OSC 0 window title, OSC 8 hyperlink, CSI 2J, C1 controls,
DEL, bidi overrides, zero-width characters) and rich markup (``[/]``, ``[link=...]``). The real
CLI runs in a child process on a pseudo-terminal, as a person would see it: with the live
tree, with ``-v``, and plain. Everything it writes may contain the styling rich itself emits
(SGR colours, cursor moves of the live view) and nothing else; every hostile sequence must
be there as visible text. On b2b2e77 the sequences reached the terminal raw, and a stray
``[/]`` in what a kernel wrote to its diagnostic stream crashed ``run`` and ``chat``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.testing import ScriptedModelServer

from ..helpers import cells_then_final
from .conftest import ROWS, RUNTIME

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

OSC52 = "\x1b]52;c;cHduZWQgY2xpcGJvYXJk\x07"
OSC0 = "\x1b]0;pwned window title\x07"
OSC8 = "\x1b]8;;https://evil.example/login\x1b\\session expired, re-enter your key\x1b]8;;\x1b\\"
CSI = "\x1b[2J\x1b[H"
C1 = "\x9b31m\x9d0;c1 title\x9c"
BIDI = "\u202etxt.exe\u202c \u2066iso\u2069 zero\u200bwidth"
MARKUP = "[/] [link=https://evil.example]session expired, re-enter your key[/link] [bold red]"
# In the code too (a comment on the first line, which -v shows); without NEL/U+2028, which
# would be line breaks to some parsers and are covered in output and the answer.
CODE_PAYLOAD = f"{OSC52}{OSC0}{OSC8}{CSI}{C1}\x7f{BIDI}{MARKUP}"
PAYLOAD = f"{CODE_PAYLOAD}\x85\u2028end"
ANSWER = f"the answer {PAYLOAD}"

HOSTILE_CELL = f"# {CODE_PAYLOAD}\npayload = {PAYLOAD!r}\nprint('output', payload)\nans = {ANSWER!r}"
# The cell writes to the kernel's diagnostic stream and kills the kernel: the host's error
# then quotes what the kernel said.
DIAG_CELL = (
    "import gc, os, signal\n"
    "fd = next(o.diag_fd for o in gc.get_objects() if isinstance(getattr(o, 'diag_fd', None), int))\n"
    f"os.write(fd, ({PAYLOAD!r}).encode('utf-8', 'surrogatepass'))\n"
    "os.kill(os.getpid(), signal.SIGKILL)"
)

# What rich writes for styling and for the live view's redraws: SGR, cursor moves, erase in
# line, cursor show/hide. Anything else that starts with ESC came from somewhere else.
RICH_OWN = re.compile(rb"\x1b\[[0-9;?]*[mABCDGHKhl]")
# Decoded, no terminal output may hold these at all: BEL, DEL, C1, bidi and invisible formatting.
NEVER = re.compile("[\x07\x7f\x80-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def raw_sequences(out: bytes) -> list[str]:
    """Every control sequence in ``out`` that rich's own styling does not explain."""
    found = []
    for m in re.finditer(rb"\x1b", out):
        if not RICH_OWN.match(out, m.start()):
            found.append(repr(out[m.start() : m.start() + 16]))
    found += [f"U+{ord(m.group()):04X}" for m in NEVER.finditer(out.decode("utf-8", "replace"))]
    return found


def on_a_terminal(
    args: list[str], env: dict[str, str], cwd: Path, stdin: bytes | None = None, timeout: float = 240
) -> tuple[int, bytes]:
    """Run the CLI with stdout and stderr on a pseudo-terminal (200x50); what a person sees."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm_sandbox.cli", *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=cwd,
        close_fds=True,
    )
    os.close(slave)
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks)


@pytest.fixture
def user(tmp_path: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLM_SANDBOX_") and k not in ("NO_COLOR",)}
    env |= {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "TERM": "xterm-256color",
        "OPENAI_API_KEY": ScriptedModelServer.api_key,
    }
    if RUNTIME not in ("", "runc"):
        env["RLM_SANDBOX_RUNTIME"] = RUNTIME
    work = tmp_path / "work"
    work.mkdir()
    data = work / "input.txt"
    data.write_text("some input\n")
    return {"env": env, "cwd": work, "input": data, "tmp": tmp_path}


def record(name: str, status: str, found: list[str], seconds: float, shown: bool) -> None:
    reached = "nothing raw" if not found else "RAW: " + ", ".join(found[:4])
    ROWS.append({"attack": name, "runtime": RUNTIME, "status": status,
                 "outcome": f"terminal got {reached}; sequences shown as text: {shown}"[:160],
                 "seconds": round(seconds, 2), "breached": bool(found), "terminal": reached})  # fmt: skip


def visible_markers(out: bytes) -> bool:
    """The hostile text is on the screen as text (escaped), not swallowed."""
    return all(
        m in out for m in (rb"\x1b]52;c;", rb"\x1b]0;pwned", rb"\x9b31m", rb"\u202etxt.exe", b"[/] [link=")
    )


@pytest.mark.parametrize(
    ("mode", "flags", "env"),
    [
        ("live", [], {}),
        ("live -v", ["-v"], {}),
        ("plain -v", ["-v"], {"RLM_SANDBOX_NO_LIVE": "1"}),
        ("plain", [], {"RLM_SANDBOX_NO_LIVE": "1"}),
    ],
)
def test_run_shows_hostile_text_without_acting_on_it(
    user: dict[str, Any], sandbox_image: str, request, mode: str, flags: list[str], env: dict[str, str]
) -> None:
    server = ScriptedModelServer(cells_then_final(HOSTILE_CELL, final="FINAL_VAR(ans)")).start()
    t0 = time.monotonic()
    try:
        code, out = on_a_terminal(
            ["run", "--model", server.model_name, "--api-base", server.url, "--task", "Summarise.",
             "-i", str(user["input"]), *flags],
            user["env"] | env,
            user["cwd"],
        )  # fmt: skip
    finally:
        server.close()
    found = raw_sequences(out)
    record(request.node.name, f"exit {code}", found, time.monotonic() - t0, visible_markers(out))
    text = out.decode("utf-8", "replace")
    assert code == 0, text[-3000:]
    assert not found, f"raw sequences reached the terminal ({mode}): {found}"
    assert visible_markers(out), text[-3000:]
    # The answer, on stdout at a terminal, is escaped whole.
    assert "the answer \\x1b]52;c;cHduZWQgY2xpcGJvYXJk\\x07" in text
    if flags:
        assert "# \\x1b]52;c;" in text, "the cell's code is shown with -v"
        assert "output \\x1b]52;c;" in text, "the cell's output is shown with -v"


def test_a_kernels_diagnostics_cannot_style_the_terminal_or_crash_run(
    user: dict[str, Any], sandbox_image: str, request
) -> None:
    server = ScriptedModelServer(cells_then_final(DIAG_CELL)).start()
    t0 = time.monotonic()
    try:
        code, out = on_a_terminal(
            [
                "run",
                "--model",
                server.model_name,
                "--api-base",
                server.url,
                "--task",
                "t",
                "-i",
                str(user["input"]),
            ],
            user["env"] | {"RLM_SANDBOX_NO_LIVE": "1"},
            user["cwd"],
        )
    finally:
        server.close()
    found = raw_sequences(out)
    record(request.node.name, f"exit {code}", found, time.monotonic() - t0, visible_markers(out))
    text = out.decode("utf-8", "replace")
    assert "MarkupError" not in text and "unexpected" not in text, text[-3000:]
    assert code == 4 and "sandbox_error" in text and "kernel said:" in text, text[-3000:]
    assert not found, found
    assert visible_markers(out), text[-3000:]


def test_a_kernels_diagnostics_cannot_crash_chat(user: dict[str, Any], sandbox_image: str, request) -> None:
    server = ScriptedModelServer(cells_then_final(DIAG_CELL)).start()
    t0 = time.monotonic()
    try:
        code, out = on_a_terminal(
            ["chat", "--model", server.model_name, "--api-base", server.url, "-i", str(user["input"])],
            user["env"] | {"RLM_SANDBOX_NO_LIVE": "1"},
            user["cwd"],
            stdin=b"What is it?\n/quit\n",
        )
    finally:
        server.close()
    found = raw_sequences(out)
    record(request.node.name, f"exit {code}", found, time.monotonic() - t0, visible_markers(out))
    text = out.decode("utf-8", "replace")
    assert "MarkupError" not in text and "unexpected" not in text, text[-3000:]
    assert code in (0, 4) and "kernel said:" in text, text[-3000:]
    assert not found, found
    assert visible_markers(out), text[-3000:]


@pytest.fixture
def recorded(user: dict[str, Any], sandbox_image: str) -> dict[str, Any]:
    """One hostile run, piped (no terminal), with --json and a trace."""
    server = ScriptedModelServer(cells_then_final(HOSTILE_CELL, final="FINAL_VAR(ans)")).start()
    trace = user["tmp"] / "trace.jsonl"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rlm_sandbox.cli", "run", "--model", server.model_name, "--api-base",
             server.url, "--task", "Summarise.", "-i", str(user["input"]), "--json", "--trace", str(trace)],
            capture_output=True, env=user["env"], cwd=user["cwd"], timeout=240,
        )  # fmt: skip
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return {"proc": proc, "trace": trace}


def test_json_output_is_exact_and_holds_no_raw_control_byte(recorded: dict[str, Any], request) -> None:
    out = recorded["proc"].stdout
    record(request.node.name, "ok", raw_sequences(out), 0.0, True)
    assert out.count(b"\n") == 1, out
    assert json.loads(out)["answer"] == ANSWER, "the answer decodes to exactly what the model chose"
    assert b"\x1b" not in out and not raw_sequences(out), raw_sequences(out)


def test_a_piped_answer_is_byte_exact(user: dict[str, Any], sandbox_image: str) -> None:
    server = ScriptedModelServer(cells_then_final(HOSTILE_CELL, final="FINAL_VAR(ans)")).start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rlm_sandbox.cli", "run", "--model", server.model_name, "--api-base",
             server.url, "--task", "Summarise.", "-i", str(user["input"])],
            capture_output=True, env=user["env"] | {"RLM_SANDBOX_NO_LIVE": "1"}, cwd=user["cwd"], timeout=240,
        )  # fmt: skip
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout == (ANSWER + "\n").encode(), "a pipe gets the program's output unchanged"
    assert not raw_sequences(proc.stderr), "the progress on stderr is escaped even when piped"


def poisoned(trace: Path, out: Path) -> Path:
    """The trace with the payload (and HTML) appended to every string field but the event
    kind: node ids, models, tasks, code, outputs, errors, tool and file names alike."""
    extra = PAYLOAD + '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    lines = []
    for raw in trace.read_text().split("\n"):
        if not raw.strip():
            continue
        ev = json.loads(raw)
        lines.append(
            json.dumps({k: (v + extra if isinstance(v, str) and k != "event" else v) for k, v in ev.items()})
        )
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.parametrize("command", ["show", "summary"])
def test_trace_views_show_a_hostile_trace_as_text(
    recorded: dict[str, Any], user: dict[str, Any], request, command: str
) -> None:
    trace = poisoned(recorded["trace"], user["tmp"] / "poisoned.jsonl")
    t0 = time.monotonic()
    code, out = on_a_terminal(["trace", command, str(trace)], user["env"], user["cwd"])
    found = raw_sequences(out)
    record(request.node.name, f"exit {code}", found, time.monotonic() - t0, visible_markers(out))
    assert code == 0, out.decode("utf-8", "replace")[-3000:]
    assert not found, found
    assert rb"\x1b]52;c;" in out and b"[/] [link=" in out
    # Asking for a node that is not there lists the (hostile) node ids: escaped too.
    code, out = on_a_terminal(["trace", "show", str(trace), "--node", "nope"], user["env"], user["cwd"])
    assert code == 2 and not raw_sequences(out) and rb"root\x1b]52;" in out


def test_the_html_page_escapes_every_field(recorded: dict[str, Any], user: dict[str, Any]) -> None:
    trace = poisoned(recorded["trace"], user["tmp"] / "poisoned.jsonl")
    page = user["tmp"] / "page.html"
    proc = subprocess.run(
        [sys.executable, "-m", "rlm_sandbox.cli", "trace", "html", str(trace), "-o", str(page)],
        capture_output=True, env=user["env"], cwd=user["cwd"], timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    html = page.read_text()
    assert "<img" not in html and html.count("<script") == 1, "only the page's own script"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "onerror=alert(2)" in html
