"""The rough edges a new user hit (issue 14), through the real CLI as a user runs it: a child
process, real containers, the scripted model server on loopback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.testing import ScriptedModelServer, sequence_policy

from ..conftest import ROOT
from ..helpers import JSON_KEYS, cells_then_final, cli, json_out

pytestmark = pytest.mark.docker
KEY_ENV = {"OPENAI_API_KEY": ScriptedModelServer.api_key}


def base_args(server: ScriptedModelServer) -> list[str]:
    return ["run", "--model", server.model_name, "--api-base", server.url]


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """The user's own directories in the test's temp dir, so nothing lands in ~."""
    env = {
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    return KEY_ENV | env


def traces_in(env: dict[str, str]) -> Path:
    return Path(env["XDG_STATE_HOME"]) / "rlm-sandbox" / "traces"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- errors a user can act on


def test_empty_input_is_refused_before_any_container_or_model_call(scripted, tmp_path: Path) -> None:
    server = scripted()
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    for name, extra, stdin in (("standard input", [], b""), (str(empty), ["-i", str(empty)], None)):
        trace = tmp_path / f"t-{len(extra)}.jsonl"
        proc = cli(
            *base_args(server),
            "--task",
            "t",
            "--trace",
            str(trace),
            "--json",
            *extra,
            stdin=stdin,
            env=KEY_ENV,
        )
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        assert f"error: the input is empty: {name} has no bytes" in err and "hint: " in err
        assert json_out(proc)["status"] == "usage"
        # No run began (its trace would exist from run_start on), no model was asked.
        assert not trace.exists() and server.requests.count == 0


#: A cell that says what ``context`` is in the kernel: its type, its length, its first bytes.
WHAT_IS_CONTEXT = "kind = f'{type(context).__name__} {len(context)} {context[:4]!r}'"


def test_binary_input_is_bytes_in_the_kernel_and_said_so(scripted, tmp_path: Path) -> None:
    server = scripted(cells_then_final(WHAT_IS_CONTEXT, final="FINAL_VAR(kind)"))
    blob = tmp_path / ("a-binary-file-with-a-long-name-" + "x" * 40 + ".bin")
    data = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
    blob.write_bytes(data)
    proc = cli(*base_args(server), "--task", "What is this?", "-i", str(blob), "--json", env=KEY_ENV)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    out = json_out(proc)
    assert out["answer"] == f"bytes {len(data)} b'\\x89PNG'"  # the bytes, not a garbled str
    (warning,) = out["warnings"]
    assert warning.startswith(f"the input {blob} is not UTF-8 text (it has NUL bytes")
    # Said on stderr too, as one line however long (stderr is a pipe here: never wrapped).
    assert f"warning: {warning}" in err.splitlines()
    first = server.requests.bodies[0]["messages"]
    prompt = "\n".join(str(m["content"]) for m in first)
    assert f"a bytes object of {len(data):,} bytes (the input is not UTF-8 text" in prompt
    assert "b'\\x89PNG\\r\\n\\x1a\\n\\x00" in prompt  # the preview: escaped bytes, no garbage


def test_non_utf8_standard_input_is_bytes_too(scripted) -> None:
    server = scripted(cells_then_final(WHAT_IS_CONTEXT, final="FINAL_VAR(kind)"))
    latin = "café au lait\n".encode("latin-1") * 100
    proc = cli(*base_args(server), "--task", "t", "--json", stdin=latin, env=KEY_ENV)
    out = json_out(proc)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert out["answer"] == f"bytes {len(latin)} b'caf\\xe9'"
    assert "standard input is not UTF-8 text" in out["warnings"][0] and "0xe9 at 3" in out["warnings"][0]


def test_a_skipped_engine_warns_on_stderr_and_in_json(scripted) -> None:
    good = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    dead = "tcp://127.0.0.1:1"
    server = scripted(cells_then_final("print(1)", final="FINAL(done)"))
    engines = ["--engine", good, "--engine", dead]
    proc = cli(*base_args(server), "--task", "t", *engines, "--json", stdin=b"abc", env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json_out(proc)
    assert out["answer"] == "done" and out["warnings"] == [f"skipping engine {dead}: it does not answer"]
    assert f"warning: skipping engine {dead}: it does not answer" in proc.stderr.decode()
    plain = cli(*base_args(server), "--task", "t", *engines, stdin=b"abc", env=KEY_ENV)
    assert plain.returncode == 0 and f"warning: skipping engine {dead}" in plain.stderr.decode()
    # Without warnings the key is still there, empty: one shape for a CI job to read.
    clean = json_out(cli(*base_args(server), "--task", "t", "--json", stdin=b"abc", env=KEY_ENV))
    assert clean["warnings"] == [] and list(clean) == JSON_KEYS


def test_a_dead_engine_counts_no_container(scripted) -> None:
    server = scripted()
    proc = cli(
        *base_args(server),
        "--task",
        "t",
        "--docker-url",
        "unix:///nonexistent/docker.sock",
        "--json",
        stdin=b"abc",
        env=KEY_ENV,
    )
    out = json_out(proc)
    assert proc.returncode == 4 and out["status"] == "sandbox_error", proc.stderr.decode()[-2000:]
    assert out["containers"] == 0 and out["nodes"] == 1 and server.requests.count == 0
    plain = cli(
        *base_args(server), "--task", "t", "--docker-url", "unix:///nonexistent/docker.sock", stdin=b"abc"
    )
    assert "1 nodes, 0 containers" in plain.stderr.decode()


# ---- output a CI job can use


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def test_schema_output_in_json_and_a_mismatch_has_its_own_exit_code(scripted, tmp_path: Path) -> None:
    schema = tmp_path / "answer.json"
    schema.write_text(json.dumps(SCHEMA))
    fits = scripted(sequence_policy('FINAL({"n": 3})'))
    proc = cli(*base_args(fits), "--task", "t", "--schema", str(schema), "--json", stdin=b"abc", env=KEY_ENV)
    out = json_out(proc)
    assert proc.returncode == 0 and out["status"] == "ok", proc.stderr.decode()[-2000:]
    assert out["output"] == {"n": 3} and json.loads(out["answer"]) == {"n": 3}
    assert list(out) == [*JSON_KEYS, "output"]

    never = scripted(sequence_policy("FINAL(many)"))
    proc = cli(
        *base_args(never), "--task", "t", "--schema", str(schema), "--json", "--schema-retries", "0",
        stdin=b"abc", env=KEY_ENV,
    )  # fmt: skip
    out = json_out(proc)
    err = proc.stderr.decode()
    assert proc.returncode == 6 and out["status"] == "answer_invalid", err[-2000:]
    assert out["output"] is None and out["answer"] is None
    assert never.requests.count == 1  # --schema-retries 0: the first answer was the only try
    assert "hint: loosen the schema, raise --schema-retries" in err
    retried = scripted(sequence_policy("FINAL(many)"))
    proc = cli(
        *base_args(retried), "--task", "t", "--schema", str(schema), "--schema-retries", "2",
        stdin=b"abc", env=KEY_ENV,
    )  # fmt: skip
    assert proc.returncode == 6 and retried.requests.count == 3
    assert "answer_invalid: " in proc.stderr.decode() and proc.stdout == b""


def test_config_show_into_a_pipe_is_not_wrapped() -> None:
    url = "http://127.0.0.1:9/v1/" + "/".join(["a-long-path-segment"] * 8)
    proc = cli("config", "show", env={"RLM_SANDBOX_API_BASE": url, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr.decode()
    (row,) = [line for line in proc.stdout.decode().splitlines() if "api_base" in line]
    assert url in row and "env RLM_SANDBOX_API_BASE" in row


# ---- traces written unasked: private, one per run, said


def test_demo_writes_one_private_trace_per_run_and_reuses_its_log(user_env: dict[str, str]) -> None:
    first = cli("demo", "--size", "200k", "--json", env=user_env, timeout=600)
    assert first.returncode == 0, first.stderr.decode()[-3000:]
    out = json_out(first)
    assert out["max_depth_reached"] == 2  # demo --help says [default: 2]; the run agrees
    second = cli("demo", "--size", "200k", "--depth", "1", "--json", env=user_env, timeout=600)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    again = json_out(second)
    assert again["max_depth_reached"] == 1
    folder = traces_in(user_env)
    traces = sorted(folder.iterdir())
    assert len(traces) == 2 and {str(t) for t in traces} == {out["trace"], again["trace"]}
    assert all(t.name.startswith("demo-run-") and mode(t) == 0o600 for t in traces)
    assert mode(folder) == 0o700
    assert f"demo: the trace goes to {out['trace']}" in first.stderr.decode()
    (log,) = (Path(user_env["XDG_CACHE_HOME"]) / "rlm-sandbox" / "demo").glob("*.log")
    assert mode(log) == 0o400  # made once, then only read
    said = [ln for ln in second.stderr.decode().splitlines() if ln.startswith("demo: ") and " log, " in ln]
    assert said and said[0].endswith(f" at {log}")
    assert out["answer"] == again["answer"]


def test_chat_and_replay_traces_are_private_files_said_on_stderr(
    scripted, tmp_path: Path, user_env: dict[str, str]
) -> None:
    from .test_session import two_questions

    server = scripted(two_questions)
    src = tmp_path / "words.txt"
    src.write_text("a b c " * 10)
    chat = cli(
        "chat", "--model", server.model_name, "--api-base", server.url, "-i", str(src),
        stdin=b"How many words are there?\nexit\n", env=user_env,
    )  # fmt: skip
    err = chat.stderr.decode()
    assert chat.returncode == 0 and chat.stdout.decode() == "30\n", err[-3000:]
    (trace,) = traces_in(user_env).glob("chat-session-*.jsonl")
    assert mode(trace) == 0o600 and mode(trace.parent) == 0o700
    assert f"chat: the trace goes to {trace}" in err and f"session ended; trace: {trace}" in err

    recorded = tmp_path / "recorded.jsonl"
    run = cli(
        "run", "--model", server.model_name, "--api-base", server.url, "--task", "How many words are there?",
        "-i", str(src), "--trace", str(recorded), env=user_env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    replay = cli("replay", str(recorded), "-i", str(src), "--json", env=user_env)
    assert replay.returncode == 0, replay.stderr.decode()[-3000:]
    report = json.loads(replay.stdout)
    (replayed,) = traces_in(user_env).glob("replay-run-*.jsonl")
    assert report["trace"] == str(replayed) and mode(replayed) == 0o600
    assert f"replay: the trace goes to {replayed}" in replay.stderr.decode()


# ---- chat basics


def chat(server: ScriptedModelServer, src: Path, lines: str, *extra: str, env: Any = None) -> Any:
    return cli(
        "chat", "--model", server.model_name, "--api-base", server.url, "-i", str(src), *extra,
        stdin=lines.encode(), env=env or KEY_ENV,
    )  # fmt: skip


def test_chat_commands_are_local_and_never_billed(scripted, tmp_path: Path) -> None:
    from .test_session import two_questions

    server = scripted(two_questions)
    src = tmp_path / "words.txt"
    src.write_text("a b c " * 10)
    trace = tmp_path / "chat.jsonl"
    proc = chat(
        server,
        src,
        "/help\nHow many words are there?\n/frobnicate\nAnd how many are left after removing 10?\n"
        "/cost\nexit\nThis must never reach the model\n",
        "--trace",
        str(trace),
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    lines = proc.stdout.decode().splitlines()
    assert lines[:2] == ["30", "20"] and lines[2].startswith("2 questions, 4 LM calls")
    assert server.requests.count == 4  # two questions of two calls each: nothing else was sent
    assert "/cost" in err and "/quit, /exit, exit, quit, Ctrl-D" in err  # the /help text
    assert "unknown command /frobnicate" in err
    assert f"chat over {src} (60 bytes)" in err and "/quit, exit or Ctrl-D ends the session" in err
    # The session's trace shows every question with its answer.
    shown = cli("trace", "show", str(trace))
    assert shown.returncode == 0, shown.stderr.decode()
    text = shown.stdout.decode()
    assert "question 1: How many words are there?" in text and "answer: 30" in text
    assert "question 2: And how many are left after removing 10?" in text and "answer: 20" in text
    for leave in ("quit\n", "/quit\n", "/exit\n", ""):  # "" is Ctrl-D: the end of input
        before = server.requests.count
        gone = chat(server, src, leave)
        assert gone.returncode == 0 and gone.stdout == b"", gone.stderr.decode()[-2000:]
        assert server.requests.count == before and "session ended" in gone.stderr.decode()


def test_chat_refuses_standard_input_as_its_input(scripted) -> None:
    server = scripted()
    proc = cli(
        "chat", "--model", server.model_name, "--api-base", server.url, "-i", "-",
        stdin=b"hello\n", env=KEY_ENV,
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "chat reads its questions from standard input" in err
    assert "-i FILE" in err and server.requests.count == 0


# ---- small truths


def test_setup_says_what_it_is_doing() -> None:
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, timeout=900)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    steps = [line for line in err.splitlines() if line.startswith("setup: ")]
    assert [s.split(":", 1)[1].split()[0] for s in steps] == [
        "checking",
        "syncing",
        "building",
        "sandbox",
        "set-up",
    ]
    assert "sandbox image ready: rlm-sandbox:" in err
