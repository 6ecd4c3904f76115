"""The input file (sandbox/input_file.py): large loads through a private file, every fallback
to the stream, and what is left on the host afterwards. On the in-memory seam, whose kernel
reads the host's file where it is (as the container's mount shows it)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox import Sandbox, SandboxConfig
from rlm_sandbox.inputs import collect_inputs
from rlm_sandbox.sandbox import input_file as input_file_module
from rlm_sandbox.sandbox.fake import FakeBackend
from rlm_sandbox.sandbox.input_file import DIR_PREFIX, MIN_BYTES, InputFile, remove_orphans

BIG = "ünïcødé line %07d ✓\n"


def big_text(n: int = 120_000) -> str:
    text = "".join(BIG % i for i in range(n))
    assert len(text.encode()) > MIN_BYTES
    return text


def digest_in(sb: Sandbox) -> str:
    r = sb.execute(
        "import hashlib\n"
        "v = context if isinstance(context, (bytes, str)) else repr(context)\n"
        "print(hashlib.sha256(v if isinstance(v, bytes) else v.encode()).hexdigest())"
    )
    assert r.ok, r
    return r.stdout.strip()


def sha(value: str | bytes) -> str:
    return hashlib.sha256(value if isinstance(value, bytes) else value.encode()).hexdigest()


def spool_of(sb: Sandbox) -> InputFile:
    inp = sb._input_file
    assert inp is not None
    return inp


@pytest.mark.parametrize("kind", ["str", "bytes", "path", "json"])
def test_a_large_input_goes_through_the_file_and_arrives_exactly(kind: str, tmp_path: Path) -> None:
    text = big_text()
    data: Any = {
        "str": text,
        "bytes": text.encode() + b"\xff\x00",
        "path": tmp_path / "in.log",
        "json": [{"i": i, "t": "ü" * 20} for i in range(40_000)],
    }[kind]
    if kind == "path":
        data.write_text(text)
    with Sandbox(backend=FakeBackend()) as sb:
        inp = spool_of(sb)
        info = sb.load_context(data)
        assert info.via == "file"
        assert os.stat(inp.path).st_size == 0  # emptied as soon as the kernel had it
        expected = {"str": text, "bytes": data, "path": text}.get(kind)
        if expected is not None:
            assert digest_in(sb) == sha(expected)
        else:
            assert (
                sb.execute("print(len(context), context[-1])").stdout
                == "40000 {'i': 39999, 't': 'üüüüüüüüüüüüüüüüüüüü'}\n"
            )
        assert info.bytes == (len(data) if kind == "bytes" else info.bytes)
        directory = inp.dir
    assert not os.path.exists(directory)  # removed with the sandbox


def test_several_files_go_through_the_file_as_one_dict(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text(big_text(60_000))
    (tmp_path / "b.log").write_text("short\n")
    (tmp_path / "c.log").write_text("")
    (tmp_path / "d.log").write_text(big_text(70_000))
    inputs = collect_inputs([str(tmp_path)])
    with Sandbox(backend=FakeBackend()) as sb:
        info = sb.load_context(inputs)
        assert info.via == "file" and info.type == "dict"
        r = sb.execute("print(sorted((k.rsplit('/', 1)[-1], len(v)) for k, v in context.items()))")
        sizes = sorted((p.name, len(p.read_text())) for p in tmp_path.iterdir())
        assert r.stdout.strip() == repr(sizes)
        # The input set counted the files as they went into the file, as it does streaming.
        assert sum(s.bytes for s in inputs.stats.values()) == sum(
            p.stat().st_size for p in tmp_path.iterdir()
        )


def test_small_inputs_and_input_file_off_stream() -> None:
    with Sandbox(backend=FakeBackend()) as sb:
        assert sb.load_context("small").via == "stream"
    with Sandbox(SandboxConfig(input_file=False), backend=FakeBackend()) as sb:
        assert not sb.input_file
        assert sb.load_context(big_text()).via == "stream"
        assert digest_in(sb) == sha(big_text())


def test_an_engine_that_cannot_mount_gets_the_stream() -> None:
    with Sandbox(backend=FakeBackend(input_files="refuse")) as sb:
        assert not sb.input_file
        text = big_text()
        assert sb.load_context(text).via == "stream"
        assert digest_in(sb) == sha(text)


def test_a_kernel_that_cannot_read_the_file_gets_the_same_bytes_streamed(tmp_path: Path) -> None:
    """An engine in a VM behind a local socket mounts a different file (or none): the kernel
    says so and the load streams, here from the host's file (standard input is read once)."""
    text = big_text()
    with Sandbox(backend=FakeBackend(input_files="unreadable")) as sb:
        inp = spool_of(sb)
        info = sb.load_context(collect_inputs(["-"], stdin=io.BytesIO(text.encode())))
        assert info.via == "stream" and digest_in(sb) == sha(text)
        assert not sb.input_file and not os.path.exists(inp.dir)  # later loads stream at once
        assert sb.load_context(text.upper()).via == "stream"
        assert digest_in(sb) == sha(text.upper())


class _Once:
    """A context stream that can be read once (like standard input), of unknown size."""

    context_kind = "str"
    context_size = -1

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces
        self.reads = 0

    def pieces(self, chunk: int) -> Iterator[bytes]:
        self.reads += 1
        assert self.reads == 1, "read twice"
        yield from self._pieces


def test_a_file_that_runs_out_of_room_streams_what_it_holds_then_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pieces = [(BIG % i).encode() * 2000 for i in range(8)]
    real = input_file_module._write_all
    written = [0]

    def write_until_full(fd: int, data: Any) -> None:
        if written[0] >= 3:
            raise OSError(28, "No space left on device")
        written[0] += 1
        real(fd, data)

    monkeypatch.setattr(input_file_module, "_write_all", write_until_full)
    source = _Once(pieces)
    with Sandbox(backend=FakeBackend()) as sb:
        info = sb.load_context(source)
        assert info.via == "stream" and info.bytes == sum(map(len, pieces))
        assert digest_in(sb) == sha(b"".join(pieces))
        assert sb.input_file  # room may come back: the next load tries the file again
    assert source.reads == 1


def test_a_known_size_without_room_streams_without_copying(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(InputFile, "has_room", lambda self, size: False)
    with Sandbox(backend=FakeBackend()) as sb:
        text = big_text()
        assert sb.load_context(text).via == "stream" and digest_in(sb) == sha(text)


def test_the_file_is_private_and_the_sandbox_user_can_read_it() -> None:
    inp = InputFile()
    try:
        assert os.stat(inp.dir).st_mode & 0o777 == 0o700
        assert os.stat(inp.path).st_mode & 0o777 == 0o644
        assert os.path.basename(inp.dir).startswith(f"{DIR_PREFIX}{os.getpid()}-")
    finally:
        inp.close()
    assert not os.path.exists(inp.dir)
    inp.close()  # twice: no error


def test_gc_removes_the_directories_of_dead_processes_only(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    (tmp_path / f"{DIR_PREFIX}{dead_pid}-abc").mkdir()
    (tmp_path / f"{DIR_PREFIX}{dead_pid}-abc" / "input").write_bytes(b"x" * 100)
    (tmp_path / f"{DIR_PREFIX}{os.getpid()}-def").mkdir()
    (tmp_path / "unrelated").mkdir()
    removed = remove_orphans(str(tmp_path))
    assert removed == [str(tmp_path / f"{DIR_PREFIX}{dead_pid}-abc")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{DIR_PREFIX}{os.getpid()}-def", "unrelated"]
