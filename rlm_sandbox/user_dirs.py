"""The user's own directories for what rlm-sandbox keeps between runs (XDG base directories).

Traces a command writes unasked (``demo``, ``chat``, ``replay``) hold the user's input,
prompts and answers: they go under the user's state directory, in a directory only the user
can enter, never into a shared temp directory. The demo's generated log is a cache: it can
be made again, so it goes under the cache directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from rlm_sandbox.errors import ConfigError

APP = "rlm-sandbox"


def _base(variable: str, default: str, environ: Mapping[str, str] | None) -> Path:
    """``$VARIABLE`` when it is an absolute path (the XDG rule: a relative one is ignored),
    else ``~/default``."""
    value = (os.environ if environ is None else environ).get(variable, "")
    return Path(value) if value and os.path.isabs(value) else Path.home() / default


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/rlm-sandbox`` (default ``~/.local/state/rlm-sandbox``)."""
    return _base("XDG_STATE_HOME", ".local/state", environ) / APP


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/rlm-sandbox`` (default ``~/.cache/rlm-sandbox``)."""
    return _base("XDG_CACHE_HOME", ".cache", environ) / APP


def private_dir(path: Path, *, what: str) -> Path:
    """``path`` as a directory only this user can enter (0700), created if missing.

    One that exists must be a real directory of this user's (not a symlink someone else
    could point elsewhere, not another user's): its mode is then narrowed to 0700."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the {what} directory {path}: {exc.strerror or exc}",
            hint="check that directory's permissions (or set XDG_STATE_HOME / XDG_CACHE_HOME)",
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"the {what} directory {path} is not a directory (a link or a file is in its place)",
            hint="remove it; rlm-sandbox creates the directory itself",
        )
    if info.st_uid != os.getuid():
        raise ConfigError(
            f"the {what} directory {path} belongs to another user",
            hint="remove it, or point XDG_STATE_HOME / XDG_CACHE_HOME at a directory of yours",
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path
