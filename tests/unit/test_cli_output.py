"""What the CLI writes where a program reads it (issue 14): errors as JSON under --json (click's
own usage errors too), no hard wrap off a terminal, token counts read as people read them, a
first image build that says what it does, and a command's own defaults shown as they act."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.table import Table

from rlm_sandbox.cli import output
from rlm_sandbox.cli.main import main


def invoke(*args: str, **env: str):
    return CliRunner().invoke(main, list(args), env=env or None)


@pytest.fixture(autouse=True)
def _json_errors_off():
    yield
    output.json_errors(False)  # the group sets it per invocation; leave no state to other tests


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("run", "--model", "openai/x", "--json"), "Missing option '--task'"),
        (("run", "--model", "openai/x", "--task", "t", "--json", "--no-such-flag"), "No such option"),
        (("run", "--task", "t", "--json"), "Missing option '--model'"),
        (("run", "--model", "openai/x", "--task", "t", "--depth", "zero", "--json"), "'zero' is not"),
        (("nosuch", "--json"), "No such command 'nosuch'"),
        (("run", "--model", "openai/x", "--task", "t", "--json", "-i", "/nonexistent/x.log"), "not found"),
    ],
)
def test_usage_errors_under_json_are_a_json_object_on_stdout(args: tuple[str, ...], error: str) -> None:
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    (line,) = r.stdout.splitlines()
    out = json.loads(line)
    assert list(out) == ["status", "error", "hint"]
    assert out["status"] == "usage" and error in out["error"] and out["hint"]
    assert error in r.stderr  # the person still reads it where they did


def test_without_json_stdout_stays_empty_on_a_usage_error() -> None:
    r = invoke("run", "--model", "openai/x")
    assert r.exit_code == 2 and r.stdout == "" and "--task" in r.stderr


def test_an_unexpected_error_under_json_is_json_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a, **_k):
        raise RuntimeError("a bug")

    monkeypatch.setattr("rlm_sandbox.inputs.collect_inputs", boom)
    r = invoke("run", "--model", "openai/x", "--task", "t", "-i", __file__, "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["status"] == "error" and "RuntimeError: a bug" in out["error"] and "--debug" in out["hint"]


def test_a_console_off_a_terminal_never_wraps_and_at_a_terminal_does() -> None:
    long = "x" * 300
    piped = io.StringIO()
    console = output.console(file=piped)
    assert not console.is_terminal
    table = Table("setting", "value")
    table.add_row("api_base", long)
    console.print(table)
    console.print(f"note: {long}")
    lines = piped.getvalue().splitlines()
    assert any(long in line for line in lines[:-1]) and lines[-1] == f"note: {long}"
    assert max(len(line) for line in lines) < 400  # nothing is padded to the wide width either
    terminal = io.StringIO()
    tty = output.console(file=terminal, force_terminal=True, width=80)
    tty.print(f"note: {long}")
    assert max(len(line) for line in terminal.getvalue().splitlines()) <= 80


def test_one_token_formatter_for_every_view() -> None:
    from rlm_sandbox.trace import html, live, render

    assert live.fmt_tokens is render.fmt_tokens and html.fmt_tokens is render.fmt_tokens
    shown = [render.fmt_tokens(n) for n in (0, 999, 1_000, 1_549, 68_900, 999_949, 999_960)]
    assert shown == ["0", "999", "1.0k", "1.5k", "68.9k", "999.9k", "1.0M"]
    assert render.fmt_tokens(11_844_000) == "11.8M" and render.fmt_tokens(2_140_000_000) == "2.1B"


def test_image_progress_off_a_terminal_is_lines_each_step_and_the_rest_throttled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rlm_sandbox.cli.image import ProgressLines

    clock = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    out = io.StringIO()
    say = ProgressLines(Console(file=out, width=200))
    say("building the offline base rlm-sandbox-base:bookworm from Debian packages (about 40 s, once)")
    say("debian-base: debootstrap bookworm from http://deb.debian.org/debian (about 40 s)")
    say("Get:1 http://deb.debian.org/debian bookworm InRelease")  # build output, right after
    clock[0] += 6
    say("Unpacking python3 ...")  # build output, 6 s later: shown, so a long step is not silent
    say("Step 2/12 : FROM ${BASE}")
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 2)[1] for line in lines] == ["building", "debian-base:", "Unpacking", "Step"]
    assert all(line.startswith("image: ") for line in lines)


def test_a_commands_own_default_is_the_one_shown_and_used() -> None:
    r = invoke("demo", "--help")
    rest = r.output.split("--depth, --max-depth")[1].split("--depth-model")[0]
    assert "[default: 2]" in rest and "[default: 1]" not in rest, rest
    run_help = invoke("run", "--help").output.split("--depth, --max-depth")[1].split("--depth-model")[0]
    assert "[default: 1]" in run_help
    assert "--schema-retries" in invoke("run", "--help").output
