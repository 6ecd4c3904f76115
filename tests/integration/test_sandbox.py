"""The Sandbox API against the real engine: state, context, capture, limits, llm_query."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from rlm_sandbox import Sandbox, SandboxClosed
from rlm_sandbox.sandbox.config import SandboxConfig

from ..conftest import containers_of

pytestmark = pytest.mark.docker


def test_state_persists_and_container_is_removed(sandbox_config: SandboxConfig, run_id: str) -> None:
    with Sandbox(sandbox_config) as sb:
        sb.load_context("abc\n" * 10)
        r = sb.execute("n = len(context)\nprint(n)")
        assert r.ok and r.stdout == "40\n" and r.duration_s >= 0
        assert sb.execute("print(n * 2)").stdout == "80\n"
        assert containers_of(run_id) == [sb.id]
    assert containers_of(run_id) == []
    with pytest.raises(SandboxClosed):
        sb.execute("print(1)")


def test_container_removed_when_the_block_raises(sandbox_config: SandboxConfig, run_id: str) -> None:
    with pytest.raises(RuntimeError), Sandbox(sandbox_config) as sb:
        sb.execute("x = 1")
        raise RuntimeError("boom")
    assert containers_of(run_id) == []


def test_last_expression_is_shown_and_errors_keep_the_kernel(sandbox_config: SandboxConfig) -> None:
    with Sandbox(sandbox_config) as sb:
        assert sb.execute("x = 21\nx * 2").stdout == "42\n"
        r = sb.execute("def f():\n    return 1 / 0\nf()")
        assert r.error == "ZeroDivisionError: division by zero" and "line 2, in f" in (r.traceback or "")
        assert sb.execute("raise SystemExit(3)").ename == "SystemExit"
        assert sb.execute("raise KeyboardInterrupt").ename == "KeyboardInterrupt"
        assert sb.execute("print(x)").stdout == "21\n"
        assert sb.execute("def (").ename == "SyntaxError"


def test_100mb_context_round_trips_exactly(sandbox_config: SandboxConfig) -> None:
    line = "2026-11-25T06:00:00Z INFO svc=api req=%08d ok ünïcødé ✓\n"
    text = "".join(line % i for i in range(1_600_000))
    assert len(text.encode()) > 100_000_000
    digest = hashlib.sha256(text.encode()).hexdigest()
    with Sandbox(sandbox_config) as sb:
        t0 = time.perf_counter()
        sb.load_context(text)
        load_s = time.perf_counter() - t0
        r = sb.execute(
            "import hashlib\nprint(type(context).__name__, len(context), hashlib.sha256(context.encode()).hexdigest())"
        )
        assert r.stdout.split() == ["str", str(len(text)), digest], r
        # The cell's cost does not depend on the context's size.
        assert sb.execute("pass").ok
    print(f"100 MB load: {load_s:.2f} s")


def test_bytes_path_list_and_dict_contexts(sandbox_config: SandboxConfig, tmp_path: Path) -> None:
    blob = bytes(range(256)) * 5000
    path = tmp_path / "in.log"
    path.write_text("line one\nline two\n" * 50000)
    docs = [{"id": i, "text": f"doc {i} ✓"} for i in range(1000)]
    with Sandbox(sandbox_config) as sb:
        sb.load_context(blob)
        assert (
            sb.execute("print(type(context).__name__, len(context), context[:3])").stdout
            == f"bytes {len(blob)} b'\\x00\\x01\\x02'\n"
        )
        sb.load_context(path)
        r = sb.execute("print(type(context).__name__, len(context), context.count('two'))")
        assert r.stdout == f"str {path.stat().st_size} 50000\n"
        sb.load_context(docs)
        r = sb.execute(
            "import json\nprint(type(context).__name__, json.dumps(context, ensure_ascii=False) == EXPECTED)".replace(
                "EXPECTED", repr(json.dumps(docs, ensure_ascii=False))
            )
        )
        assert r.stdout == "list True\n"
        sb.load_context({"a": [1, 2], "b": None})
        assert sb.execute("context").stdout == "{'a': [1, 2], 'b': None}\n"
        with path.open("rb") as f:
            sb.load_context(f)
        assert sb.execute("len(context)").stdout == f"{path.stat().st_size}\n"


@pytest.mark.parametrize("input_file", [True, False], ids=["through-the-file", "streamed"])
def test_large_inputs_of_every_kind_arrive_the_same_either_way(
    sandbox_config: SandboxConfig, tmp_path: Path, input_file: bool
) -> None:
    text = "".join(f"line {i} ünïcødé ✓\n" for i in range(150_000))
    path = tmp_path / "in.log"
    path.write_text(text)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.log").write_text(text)
    (tmp_path / "dir" / "b.log").write_text("b\n")
    from rlm_sandbox.inputs import collect_inputs

    cases = [
        (text, "str", hashlib.sha256(text.encode()).hexdigest()),
        (text.encode() + b"\xff", "bytes", hashlib.sha256(text.encode() + b"\xff").hexdigest()),
        (path, "str", hashlib.sha256(text.encode()).hexdigest()),
        (collect_inputs([str(path)]), "str", hashlib.sha256(text.encode()).hexdigest()),
        (collect_inputs([str(tmp_path / "dir")]), "dict", None),
    ]
    cfg = sandbox_config.model_copy(update={"input_file": input_file})
    with Sandbox(cfg) as sb:
        assert sb.input_file is input_file
        for data, kind, digest in cases:
            info = sb.load_context(data)
            assert (info.type, info.via) == (kind, "file" if input_file else "stream")
            if digest is not None:
                r = sb.execute(
                    "import hashlib\nv = context if isinstance(context, bytes) else context.encode()\n"
                    "print(hashlib.sha256(v).hexdigest())"
                )
                assert r.stdout.strip() == digest
            else:
                r = sb.execute("print(sorted((k.rsplit('/', 1)[-1], len(v)) for k, v in context.items()))")
                assert r.stdout.strip() == repr([("a.log", len(text)), ("b.log", 2)])
        mount = sb.execute("print(open('/proc/self/mountinfo').read())").stdout
        assert ("/run/rlm-input" in mount) is input_file
        directory = sb._input_file.dir if sb._input_file is not None else None
    assert directory is None or not Path(directory).exists()


def test_an_engine_that_refuses_the_mount_streams(sandbox_config: SandboxConfig, monkeypatch) -> None:
    """A socket that looks local but whose engine cannot see this machine's files (a VM, a
    forwarded socket): the start is retried without the mount and loads stream."""
    from rlm_sandbox.sandbox import docker_backend

    monkeypatch.setattr(docker_backend, "_mounts_refused", {})
    made = Sandbox._new_input_file

    def elsewhere(self: Sandbox):
        inp = made(self)
        inp.path = "/nonexistent/rlm-sandbox-input"  # what such an engine cannot find
        return inp

    monkeypatch.setattr(Sandbox, "_new_input_file", elsewhere)
    with Sandbox(sandbox_config) as sb:
        assert not sb.input_file
        assert sb.load_context("x" * (2 << 20)).via == "stream"
        assert sb.execute("print(len(context))").stdout == f"{2 << 20}\n"
    assert (
        docker_backend._mounts_refused
        and "mount" in next(iter(docker_backend._mounts_refused.values())).lower()
    )


def test_fd_level_capture_of_child_processes(sandbox_config: SandboxConfig) -> None:
    with Sandbox(sandbox_config) as sb:
        r = sb.execute(
            "import os, subprocess, sys\n"
            "sys.stdout.flush()\n"
            "subprocess.run(['sh', '-c', 'echo from-child; echo child-err >&2'])\n"
            "os.system('echo from-system')\n"
            "os.write(1, b'raw-fd1\\n'); os.write(2, b'raw-fd2\\n')\n"
            "print('from-print'); print('to-stderr', file=sys.stderr)"
        )
        for word in ("from-child", "from-system", "raw-fd1", "from-print"):
            assert word in r.stdout
        for word in ("child-err", "raw-fd2", "to-stderr"):
            assert word in r.stderr
        # A cell reading stdin gets end-of-file, never protocol bytes.
        r = sb.execute(
            "import sys\nprint(repr(sys.stdin.read()), repr(input.__name__))\ntry:\n    input()\nexcept EOFError:\n    print('eof')"
        )
        assert r.stdout == "'' 'input'\neof\n"


def test_output_cap_and_notice(run_id: str) -> None:
    cfg = SandboxConfig(run_id=run_id, output_cap=1000)
    with Sandbox(cfg) as sb:
        r = sb.execute("for i in range(100000): print('x' * 50)")
        assert (
            r.stdout_truncated and "[output truncated: 5100000 bytes written, first 1000 shown]" in r.stdout
        )
        assert len(r.stdout) < 1200
        r = sb.execute("print('small')")
        assert r.stdout == "small\n" and not r.stdout_truncated


def test_cell_timeout_interrupts_and_keeps_the_namespace(sandbox_config: SandboxConfig) -> None:
    with Sandbox(sandbox_config) as sb:
        sb.execute("kept = 'yes'")
        t0 = time.perf_counter()
        r = sb.execute("import time\ntime.sleep(60)", timeout=1)
        assert r.timed_out and r.ename == "CellTimeoutError" and time.perf_counter() - t0 < 5
        r = sb.execute("try:\n    while True: pass\nexcept Exception:\n    print('swallowed')", timeout=1)
        assert r.timed_out
        assert sb.execute("print(kept)").stdout == "yes\n"


def test_engine_names_are_restored(sandbox_config: SandboxConfig) -> None:
    with Sandbox(sandbox_config) as sb:
        sb.load_context("original")
        sb.execute("context = 'changed'\nllm_query = None\ndel FINAL_VAR")
        r = sb.execute("print(context, callable(llm_query), callable(FINAL_VAR))")
        assert r.stdout == "original True True\n"


def test_final_final_var_and_show_vars(sandbox_config: SandboxConfig) -> None:
    with Sandbox(sandbox_config) as sb:
        assert sb.execute("FINAL(42)").final == "42"
        assert sb.execute("answer = 'the answer'\nFINAL_VAR('answer')").final == "the answer"
        assert sb.execute("FINAL_VAR(answer)").final == "the answer"
        r = sb.execute("FINAL_VAR('missing')")
        assert r.ename == "NameError" and r.final is None and "missing" in (r.evalue or "")
        r = sb.execute("SHOW_VARS()")
        assert "answer: str" in r.stdout
        assert sb.get_variable("answer") == "the answer" and sb.get_variable("nope") is None


def test_llm_query_and_batched_through_the_handler(sandbox_config: SandboxConfig) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def handler(prompt: str) -> str:
        time.sleep(0.3)
        with lock:
            seen.append(prompt)
        return f"answer to {prompt} ✓"

    with Sandbox(sandbox_config, llm_handler=handler) as sb:
        assert sb.execute("print(llm_query('q1'))").stdout == "answer to q1 ✓\n"
        t0 = time.perf_counter()
        r = sb.execute("out = llm_query_batched([f'p{i}' for i in range(16)])\nprint(len(out), out[7])")
        assert r.stdout == "16 answer to p7 ✓\n"
        assert time.perf_counter() - t0 < 16 * 0.3 / 2  # answered concurrently
        r = sb.execute(
            "import threading\nres = {}\n"
            "def work(i):\n    res[i] = llm_query(f't{i}')\n"
            "ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(sorted(res.values())[0], len(res))"
        )
        assert r.stdout == "answer to t0 ✓ 8\n"
        # Waiting on the host does not count against the cell's own time limit.
        r = sb.execute("print(len(llm_query_batched(['a'] * 8)))", timeout=0.5)
        assert r.ok and r.stdout == "8\n"
    assert len(seen) == 1 + 16 + 8 + 8


def test_llm_query_errors_are_clear(sandbox_config: SandboxConfig) -> None:
    with Sandbox(sandbox_config) as sb:
        r = sb.execute("llm_query('hi')")
        assert r.ename == "LLMQueryError" and "no llm_handler" in (r.evalue or "")
        assert sb.execute("print('still usable')").stdout == "still usable\n"

    def failing(prompt: str) -> str:
        raise ValueError(f"cannot answer {prompt}")

    with Sandbox(sandbox_config, llm_handler=failing) as sb:
        r = sb.execute(
            "try:\n    llm_query_batched(['a', 'b'])\nexcept LLMQueryError as e:\n    print('caught', e)"
        )
        assert "caught" in r.stdout and "cannot answer" in r.stdout
        r = sb.execute("llm_query(123)")
        assert r.ename == "TypeError"
