"""Which files an MCP client may hand to a run: only those under the ``--allow-dir`` directories.

The client (an agent, and whoever wrote the text the agent read) is untrusted: a ``path``
argument is a request to read a file on this machine and send slices of it to a model, so it
is checked before anything is opened:

- a ``..`` component is refused outright, whatever it would resolve to (an agent has no
  reason to climb, and refusing it is simpler to reason about than normalising it);
- the path (relative ones from the server's working directory) is resolved with every
  symbolic link followed, and the result must lie inside one of the allowed directories,
  themselves resolved once at start: a link inside an allowed directory that points out of
  it is refused like the target's own path would be;
- only then is it looked at: a path outside is refused without saying whether it exists;
  inside, it must be a regular file or a directory (a FIFO would block the run, a device
  read forever). A directory is walked as ``run -i DIR`` walks it, which leaves out hidden
  files and links that leave it.

With no ``--allow-dir`` every path is refused, with a message that says how to allow one.
The run reads the *resolved* path, so no link is followed again after the check; someone who
can write inside an allowed directory could still swap a file for a link between the check
and the read (the directories are the user's own: that is the trust boundary).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.safe_text import visible

ALLOW_HINT = "start the server with --allow-dir DIR (repeatable) for the directories it may read"


class AllowedDirs:
    """The directories a client's ``path`` may name, resolved once when the server starts."""

    def __init__(self, dirs: Sequence[str | os.PathLike[str]]) -> None:
        resolved: list[Path] = []
        for d in dirs:
            p = Path(d).expanduser()
            try:
                real = p.resolve(strict=True)
            except (OSError, RuntimeError):
                raise ConfigError(
                    f"--allow-dir {visible(str(d))}: no such directory", hint="give an existing directory"
                ) from None
            if not real.is_dir():
                raise ConfigError(f"--allow-dir {visible(str(d))} is not a directory")
            if real not in resolved:
                resolved.append(real)
        self.dirs: tuple[Path, ...] = tuple(resolved)

    def describe(self) -> str:
        """The allowed directories, for the tool's description and for refusals."""
        if not self.dirs:
            return "none (the server was started without --allow-dir)"
        return ", ".join(str(d) for d in self.dirs)

    def check(self, path: str) -> Path:
        """The resolved path the run may read, or a :class:`ConfigError` saying why not."""
        if not self.dirs:
            raise ConfigError(
                "this server reads no files: it was started without --allow-dir, so `path` is refused "
                "(give the input as `text` instead)",
                hint=ALLOW_HINT,
            )
        if not path or "\0" in path:
            raise ConfigError("`path` is empty or holds a NUL byte")
        given = Path(path)
        if ".." in given.parts:
            raise ConfigError(
                f"`path` {visible(path)!r} has a '..' component: refused",
                hint=f"name the file by a path inside the allowed directories: {self.describe()}",
            )
        try:
            real = (Path.cwd() / given).resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # a loop of links
            raise ConfigError(f"`path` {visible(path)!r} cannot be resolved: {exc}") from None
        if not any(real.is_relative_to(d) for d in self.dirs):
            raise ConfigError(
                f"`path` {visible(path)!r} is outside the allowed directories (after following links)",
                hint=f"only files under these directories can be read: {self.describe()}",
            )
        return _readable(real, path)


def _readable(real: Path, given: str) -> Path:
    """``real`` (inside an allowed directory) if it is a regular file or a directory."""
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise ConfigError(f"`path` {visible(given)!r}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"`path` {visible(given)!r} cannot be read: {exc.strerror or exc}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ConfigError(f"`path` {visible(given)!r} is not a regular file or a directory")
    return real
