"""An input is judged from its head on the host (issue 14): empty is refused, binary is given
as bytes and described as what it is, several -i are refused, and a 1 GB file costs one read
of 64 KB."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.input_check import (
    HEAD_BYTES,
    BinaryInput,
    check_input,
    checked_input,
    inspect_head,
    only_one_input,
)
from rlm_sandbox.inputs import StreamInput
from rlm_sandbox.rlm.context import describe_context, host_context_info, load_into, preview


@pytest.mark.parametrize(
    ("head", "complete", "why"),
    [
        (b"plain ascii log\n", True, None),
        ("caf\u00e9 \u2603 \U0001f600\n".encode(), True, None),
        ("x\u00e9".encode()[:-1], False, None),  # a character cut at the end of the head: more follows
        ("x\u00e9".encode()[:-1], True, "not UTF-8"),  # ... but not at the end of the input
        (b"\x1b[31mred\x1b[0m\n", True, None),  # control characters are text (shown escaped)
        (b"abc\x00def", True, "NUL bytes (the first at byte 3)"),
        ("caf\u00e9".encode("latin-1"), True, "byte 0xe9 at 3"),
        ("ab".encode("utf-16"), True, "NUL bytes"),
        (b"\x1f\x8b\x08\x00", True, "NUL bytes"),  # a gzip header
    ],
)
def test_the_head_says_text_or_why_not(head: bytes, complete: bool, why: str | None) -> None:
    found = inspect_head(head, complete=complete)
    assert (found is None) == (why is None), found
    if why is not None:
        assert found is not None and why in found


def test_an_empty_input_is_a_usage_error_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        check_input("standard input", b"", complete=True)
    assert info.value.status == "usage" and "standard input" in info.value.message
    assert "empty" in info.value.message and info.value.hint
    assert check_input("x", b"", complete=False) is None  # a head still coming is not empty


def test_only_the_head_of_a_big_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.log"
    with open(big, "wb") as f:
        f.write(b"a log line\n" * (2 * HEAD_BYTES // 11))
        f.truncate(1 << 30)  # 1 GB, sparse: past the text it is NUL bytes, which the check never sees
    reads: list[int] = []
    real_open = open

    class Counting:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def read(self, n: int = -1) -> bytes:
            reads.append(n)
            return self.f.read(n)

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Counting(real_open(p, mode, *a, **k)))
    assert checked_input(big, str(big)) is big  # its head is text: the path itself, streamed later
    assert reads == [HEAD_BYTES]


def test_a_binary_file_becomes_bytes_described_truthfully(tmp_path: Path) -> None:
    data = tmp_path / "blob.bin"
    data.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    found = checked_input(data, str(data))
    assert isinstance(found, BinaryInput) and found.source == data and "NUL bytes" in found.reason
    info = host_context_info(found)
    assert info is not None and (info.type, info.length) == ("bytes", os.path.getsize(data))
    desc = describe_context(found, info)
    assert desc.startswith(f"a bytes object of {os.path.getsize(data):,} bytes")
    assert "not UTF-8 text" in desc and "NUL bytes" in desc
    shown = preview(found)
    assert "b'\\x89PNG\\r\\n\\x1a\\n\\x00" in shown and "\x00" not in shown  # escaped, never raw
    assert "is not UTF-8 text" in found.warnings[0] and str(data) in found.warnings[0]


def test_binary_standard_input_keeps_its_head_and_streams_whole() -> None:
    raw = b"\xff\xfe" + b"x" * (3 * HEAD_BYTES)
    found = checked_input(StreamInput(io.BytesIO(raw)), "standard input")
    assert isinstance(found, BinaryInput) and "0xff at 0" in found.reason
    assert host_context_info(found) is None  # the kernel says how long it is
    loaded: dict[str, Any] = {}

    class Sandbox:
        def load_context(self, data: Any, *, kind: str | None = None, progress: Any = None) -> Any:
            loaded["kind"], loaded["bytes"] = kind, b"".join(iter(lambda: data.read(65536), b""))
            return None

    load_into(Sandbox(), found)
    assert loaded == {"kind": "bytes", "bytes": raw}


def test_text_standard_input_is_not_wrapped() -> None:
    stream = StreamInput(io.BytesIO(b"hello\n"))
    assert checked_input(stream, "standard input") is stream
    with pytest.raises(ConfigError, match="standard input has no bytes"):
        checked_input(StreamInput(io.BytesIO(b"")), "standard input")


def test_one_input_only() -> None:
    assert only_one_input(()) is None and only_one_input(("a.log",)) == "a.log"
    with pytest.raises(ConfigError) as info:
        only_one_input(("a.log", "b.log"))
    assert "given 2 times (a.log, b.log)" in info.value.message and "cat a.log b.log" in info.value.hint
