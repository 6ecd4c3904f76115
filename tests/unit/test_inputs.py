"""The input walker, decompression, the cap on what an input may become, standard input."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from pathlib import Path

import pytest
import zstandard

from rlm_sandbox.errors import ConfigError, InputTooLarge
from rlm_sandbox.inputs import InputFile, InputSet, as_input, collect_inputs
from rlm_sandbox.inputs.walk import glob_matches
from rlm_sandbox.sandbox.context_source import FileStart

TEXT = "first line\nERROR disk full\nthird\n"


def tree(root: Path) -> Path:
    """plain, .gz, .bz2, .xz, .zst (nested), a hidden file and directory, links in and out."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("secret\n")
    (root / ".env").write_text("KEY=1\n")
    (root / "a.log").write_text(TEXT)
    (root / "b.log.gz").write_bytes(gzip.compress(TEXT.encode()))
    (root / "c.log.bz2").write_bytes(bz2.compress(TEXT.encode()))
    (root / "sub" / "d.log.xz").write_bytes(lzma.compress(TEXT.encode()))
    (root / "sub" / "deeper" / "e.log.zst").write_bytes(zstandard.ZstdCompressor().compress(TEXT.encode()))
    (root / "notes.txt").write_text("not a log\n")
    outside = root.parent / f"{root.name}-outside.log"
    outside.write_text("outside\n")
    (root / "out.log").symlink_to(outside)
    (root / "in.log").symlink_to(root / "a.log")  # the same file again: kept once
    return root


def all_bytes(inputs: InputSet, chunk: int = 7) -> dict[str, bytes]:
    out: dict[str, bytearray] = {}
    current = None
    for piece in inputs.pieces(chunk):
        if isinstance(piece, FileStart):
            current = out.setdefault(piece.name, bytearray())
        else:
            if current is None:
                current = out.setdefault(inputs.files[0].name, bytearray())
            current += bytes(piece)
    return {k: bytes(v) for k, v in out.items()}


def test_a_directory_is_walked_in_a_stable_order_and_skips_are_said(tmp_path: Path) -> None:
    root = tree(tmp_path / "logs")
    inputs = collect_inputs([str(root)])
    assert inputs.names == [
        "a.log",
        "b.log.gz",
        "c.log.bz2",
        "notes.txt",
        "sub/d.log.xz",
        "sub/deeper/e.log.zst",
    ]
    assert inputs.context_kind == "files"
    warnings = "\n".join(inputs.warnings)
    assert "2 hidden" in warnings and ".git/" in warnings and ".env" in warnings
    assert "symbolic link(s) leaving the directory given: out.log" in warnings
    assert "reached more than once: in.log" in warnings
    assert [f.shown for f in inputs.files][:2] == [str(root / "a.log"), str(root / "b.log.gz")]


def test_every_format_is_decompressed_as_it_streams(tmp_path: Path) -> None:
    inputs = collect_inputs([str(tree(tmp_path / "logs"))], ["*.log*"])
    got = all_bytes(inputs)
    assert set(got) == set(inputs.names) and all(v == TEXT.encode() for v in got.values())
    assert all((s.bytes, s.lines, s.complete) == (len(TEXT), 3, True) for s in inputs.stats.values())
    for name in inputs.names:  # read again from disk, for citations
        with inputs.open(name) as f:
            assert f.read() == TEXT.encode()


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["*.log"], ["a.log"]),
        (["*.gz", "*.zst"], ["b.log.gz", "sub/deeper/e.log.zst"]),
        (["sub/*"], ["sub/d.log.xz", "sub/deeper/e.log.zst"]),
        (["**/*.xz"], ["sub/d.log.xz"]),
        (["*.txt"], ["notes.txt"]),
    ],
)
def test_glob_filters_the_files_of_a_directory(
    tmp_path: Path, patterns: list[str], expected: list[str]
) -> None:
    assert collect_inputs([str(tree(tmp_path / "logs"))], patterns).names == expected


def test_glob_rules() -> None:
    assert glob_matches("x/y/a.log", ["*.log"]) and not glob_matches("x/a.log.gz", ["*.log"])
    assert glob_matches("a.gz", ["**/*.gz"]) and glob_matches("x/a.gz", ["**/*.gz"])
    assert glob_matches("anything", [])


def test_a_glob_that_keeps_nothing_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no input files: .* matching --glob \*\.nope"):
        collect_inputs([str(tree(tmp_path / "logs"))], ["*.nope"])


def test_names_stay_unique_across_directories(tmp_path: Path) -> None:
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.log").write_text(d + "\n")
    inputs = collect_inputs([str(tmp_path / "one"), str(tmp_path / "two")])
    assert inputs.names == ["x.log", str(tmp_path / "two" / "x.log")]
    assert all_bytes(inputs) == {"x.log": b"one\n", str(tmp_path / "two" / "x.log"): b"two\n"}


def test_files_given_directly_are_taken_as_given(tmp_path: Path) -> None:
    hidden = tmp_path / ".hidden.log"
    hidden.write_text(TEXT)
    inputs = collect_inputs([str(hidden)])
    assert inputs.names == [str(hidden)] and inputs.context_kind == "str" and not inputs.warnings
    assert inputs.simple_path() == hidden  # one plain file loads the way a Path always has


def test_special_files_are_skipped_not_read(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "pipe")
    (tmp_path / "d" / "ok.log").write_text("x\n")
    inputs = collect_inputs([str(tmp_path / "d")])
    assert inputs.names == ["ok.log"] and "not regular files: pipe" in inputs.warnings[0]


def test_missing_paths_and_a_second_stdin_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="input file not found"):
        collect_inputs([str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="given twice"):
        collect_inputs(["-", "-"], stdin=io.BytesIO(b"x"))


def test_stdin_compressed_is_recognised_spooled_and_read_again(tmp_path: Path) -> None:
    (tmp_path / "f.log").write_text("file\n")
    inputs = collect_inputs(["-", str(tmp_path / "f.log")], stdin=io.BytesIO(gzip.compress(TEXT.encode())))
    assert inputs.names == ["<stdin>", str(tmp_path / "f.log")]
    assert all_bytes(inputs)["<stdin>"] == TEXT.encode()
    with inputs.open("<stdin>") as f:
        assert f.read() == TEXT.encode()
    spool = inputs._spool.path if inputs._spool else None
    assert spool is not None and spool.exists() and (spool.stat().st_mode & 0o777) == 0o600
    inputs.close()
    assert not spool.exists()


def test_a_gzip_bomb_stops_at_the_cap_and_names_the_file(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.log.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        zeros = b"\0" * (1 << 20)
        for _ in range(64):  # 64 MiB of zeros, about 64 KB on disk
            f.write(zeros)
    assert bomb.stat().st_size < 1 << 20
    (tmp_path / "small.log").write_text("x\n" * 100)
    inputs = collect_inputs([str(tmp_path / "small.log"), str(bomb)]).bound(4 << 20)
    inputs.check_known_sizes()  # the plain file is small; the bomb's size is not known yet
    sent = 0
    with pytest.raises(InputTooLarge) as caught:
        for piece in inputs.pieces(1 << 20):
            if not isinstance(piece, FileStart):
                sent += len(piece)
    assert sent <= 4 << 20  # never more than the cap left the host
    assert caught.value.file == str(bomb) and caught.value.cap == 4 << 20
    assert "4 MiB" in str(caught.value) and "bomb.log.gz" in str(caught.value)
    assert caught.value.budget == "max_input_bytes"


def test_known_sizes_past_the_cap_are_refused_before_streaming(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("a" * 1000)
    (tmp_path / "b.log").write_text("b" * 1000)
    inputs = collect_inputs([str(tmp_path / "a.log"), str(tmp_path / "b.log")]).bound(1500, "tenant t")
    with pytest.raises(InputTooLarge, match=r"b\.log") as caught:
        inputs.check_known_sizes()
    assert "tenant t" in str(caught.value)


def test_a_corrupt_compressed_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.log.gz").write_bytes(b"\x1f\x8bthis is not gzip at all")
    inputs = collect_inputs([str(tmp_path / "bad.log.gz")])
    with pytest.raises(ConfigError, match=r"bad\.log\.gz is not valid gzip data"):
        all_bytes(inputs)


def test_the_api_forms(tmp_path: Path) -> None:
    root = tree(tmp_path / "logs")
    assert as_input("text") == "text" and as_input([1, 2]) == [1, 2]
    assert as_input({"k": [1]}) == {"k": [1]}  # JSON stays JSON
    assert isinstance(as_input(root), InputSet) and as_input(root).names[0] == "a.log"
    pair = as_input([root / "a.log", root / "b.log.gz"])
    assert pair.names == [str(root / "a.log"), str(root / "b.log.gz")] and pair.as_dict
    texts = as_input({"one.log": "x\n"})
    assert texts.as_dict and texts.context_kind == "files" and all_bytes(texts) == {"one.log": b"x\n"}
    stream = as_input(io.BytesIO(b"streamed\n"))
    assert isinstance(stream, InputSet) and all_bytes(stream) == {"<stream>": b"streamed\n"}
    stream.close()


def test_an_input_set_needs_files() -> None:
    with pytest.raises(ConfigError):
        InputSet([])
    with pytest.raises(ConfigError):
        InputSet([InputFile("<stdin>", "-")])  # standard input without a stream


def test_sizes_read_as_people_write_them() -> None:
    from rlm_sandbox.rlm.config import RLMConfig
    from rlm_sandbox.sizes import parse_size

    assert parse_size("8g") == parse_size("8GiB") == parse_size("8 GB") == 8 << 30
    assert parse_size("512m") == 512 << 20 and parse_size("1.5k") == 1536 and parse_size(1000) == 1000
    assert RLMConfig(max_input_bytes="1t").max_input_bytes == 1 << 40
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_the_tenants_cap_applies_before_any_kernel_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A text known to pass the tenant's (lower) cap is refused before a container is asked for."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")
    from rlm_sandbox import RLM, RLMConfig
    from rlm_sandbox.sandbox.fake import FakeBackend
    from rlm_sandbox.testing import ScriptedClient

    backend, client = FakeBackend(), ScriptedClient()
    config = RLMConfig(tenant="t", tenants={"t": {"max_input_bytes": "1k"}}, max_input_bytes="1m")
    result = RLM(root_lm=client, backend=backend, config=config).run(context="x" * 2000, task="t")
    assert (result.status, result.budget, result.fallback) == ("budget_exhausted", "max_input_bytes", False)
    assert "tenant t's max_input_bytes" in (result.error or "") and "1 KiB" in (result.error or "")
    assert backend.started == [] and client.calls == 0
    assert config.input_cap() == (1024, "tenant t's max_input_bytes")


def test_files_reach_the_kernel_raw_as_a_dict_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``files`` kind over the real wire format (the fake backend's kernel is the real
    loop and REPL): names and texts exact, empty files and non-ASCII included, order kept."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")
    from rlm_sandbox.sandbox.core import Sandbox
    from rlm_sandbox.sandbox.fake import FakeBackend

    texts = {
        "z.log": "last name first\n",
        "é/ü.log": "naïve — ünïcode\n",
        "empty.log": "",
        "a.log": "x" * 70_000,
    }
    inputs = InputSet([InputFile(k, k, text=v) for k, v in texts.items()], as_dict=True)
    with Sandbox(backend=FakeBackend(), context_chunk=4096) as sb:
        info = sb.load_context(inputs)
        assert (info.type, info.length, info.bytes) == (
            "dict",
            4,
            sum(len(v.encode()) for v in texts.values()),
        )
        r = sb.execute(
            "print(list(context)); print([len(v) for v in context.values()]); print(context['é/ü.log'])"
        )
        assert r.stdout == f"{list(texts)}\n{[len(v) for v in texts.values()]}\nnaïve — ünïcode\n\n"
    single = InputSet([InputFile("one.log", "one.log", text="only\n")])
    with Sandbox(backend=FakeBackend()) as sb:
        assert sb.load_context(single).type == "str"
        assert sb.execute("print(repr(context))").stdout == "'only\\n'\n"


def test_streaming_a_bomb_holds_one_chunk_at_a_time(tmp_path: Path) -> None:
    """256 MiB decompressed through the host with no cap: Python's allocations peak near
    one chunk (1 MiB here), never near the decompressed size."""
    import tracemalloc

    bomb = tmp_path / "bomb.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        for _ in range(256):
            f.write(b"\0" * (1 << 20))
    inputs = collect_inputs([str(bomb)])
    tracemalloc.start()
    try:
        streamed = sum(len(p) for p in inputs.pieces(1 << 20) if not isinstance(p, FileStart))
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed == 256 << 20
    assert peak < 8 << 20, f"peak {peak} bytes"
