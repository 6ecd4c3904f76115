"""Where traces written unasked go (issue 14): the user's state directory, a directory only the
user can enter; a link or a loose directory planted in its place does not receive them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.trace.writer import Tracer, default_trace_path
from rlm_sandbox.user_dirs import cache_dir, private_dir, state_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_xdg_directories_and_their_defaults(tmp_path: Path) -> None:
    assert state_dir({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "rlm-sandbox"
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "rlm-sandbox"
    home = Path.home()
    assert state_dir({}) == home / ".local/state/rlm-sandbox"
    assert state_dir({"XDG_STATE_HOME": "relative/dir"}) == home / ".local/state/rlm-sandbox"  # XDG: ignored
    assert cache_dir({}) == home / ".cache/rlm-sandbox"


def test_each_run_gets_a_new_private_trace_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    a = default_trace_path("demo", "run-1")
    b = default_trace_path("demo", "run-2")
    assert a.parent == b.parent == tmp_path / "state" / "rlm-sandbox" / "traces"
    assert a.name == "demo-run-1.jsonl" and a != b
    for path in (a, b):
        Tracer("r", path).close()
        assert mode(path) == 0o600
    assert mode(a.parent) == 0o700


def test_a_loose_directory_is_narrowed_and_a_planted_one_is_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    assert private_dir(loose, what="trace") == loose and mode(loose) == 0o700
    elsewhere = tmp_path / "world-readable"
    elsewhere.mkdir()
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="not a directory"):
        private_dir(link, what="trace")
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        private_dir(afile, what="trace")


def test_another_users_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.lstat(theirs).st_uid + 1)
    with pytest.raises(ConfigError, match="belongs to another user"):
        private_dir(theirs, what="trace")
