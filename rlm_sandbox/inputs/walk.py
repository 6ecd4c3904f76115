"""From the ``-i`` values to an ordered list of input files: files, directories, ``-``.

A directory is walked recursively in a stable order (entries sorted by name at every level,
depth first), filtered by ``--glob`` patterns. What is skipped is said, never silently
dropped: hidden files and directories (a name starting with ``.``: ``.git`` holds nothing a
log question needs, and secrets like ``.env`` live there), symbolic links whose target is
outside the directory given (a link must not pull ``/etc`` or ``~/.ssh`` into a prompt),
anything that is not a regular file (a FIFO would block the run), and a file reached twice.
Files named directly with ``-i`` are taken as given: the user chose them.

Names: a file found in a directory is named by its path relative to that directory; a file
given directly by the path as given. A name two inputs would share falls back to the path
as given (``logs-a/x.log``), so every name is unique and says where it came from.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.inputs.decompress import compression_of_name

STDIN = "-"
STDIN_NAME = "<stdin>"
EXAMPLES = 3  # of each kind of skipped entry, named in its warning


@dataclass(frozen=True)
class Found:
    """A file on disk the walk chose: its name in ``context`` and where it is."""

    name: str
    shown: str  # the path as the user would type it (the spec joined with the relative path)
    path: Path
    compression: str | None
    size: int


@dataclass
class Skipped:
    """What the walk left out, by reason, for one warning each."""

    hidden: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    unmatched: int = 0

    def warnings(self) -> list[str]:
        out = []
        for items, what in (
            (self.hidden, "hidden file(s) or director(ies)"),
            (self.outside, "symbolic link(s) leaving the directory given"),
            (self.special, "entr(ies) that are not regular files"),
            (self.twice, "file(s) reached more than once"),
        ):
            if items:
                shown = ", ".join(items[:EXAMPLES]) + (", ..." if len(items) > EXAMPLES else "")
                out.append(f"skipped {len(items)} {what}: {shown}")
        return out


def glob_matches(rel: str, patterns: Sequence[str]) -> bool:
    """Does ``rel`` (a path relative to a directory given, ``/``-separated) match a pattern?

    A pattern without ``/`` matches the file's name (``*.log``); one with ``/`` matches the
    whole relative path, ``*`` crossing directories as in :mod:`fnmatch`; a leading ``**/``
    may also match nothing (``**/*.gz`` takes ``a.gz`` too)."""
    if not patterns:
        return True
    base = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        if "/" not in pattern:
            if fnmatch.fnmatchcase(base, pattern):
                return True
            continue
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatchcase(rel, pattern[3:]):
            return True
    return False


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk_directory(
    spec: str, patterns: Sequence[str], seen: set[str], skipped: Skipped
) -> list[tuple[str, Path, os.stat_result]]:
    """``(relative name, path, stat)`` of every file under ``spec`` the walk keeps, in order."""
    top = Path(spec)
    root = os.path.realpath(top)
    visited_dirs = {root}
    out: list[tuple[str, Path, os.stat_result]] = []

    def visit(directory: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise ConfigError(f"cannot read the directory {directory}: {exc.strerror or exc}") from None
        for entry in entries:
            rel = prefix + entry.name
            if entry.name.startswith("."):
                skipped.hidden.append(rel + ("/" if entry.is_dir(follow_symlinks=False) else ""))
                continue
            path = directory / entry.name
            real = os.path.realpath(path)
            if entry.is_symlink() and not _within(real, root):
                skipped.outside.append(rel)
                continue
            try:
                st = os.stat(path)
            except OSError:
                skipped.special.append(rel)  # a dangling link, or gone since the listing
                continue
            if stat.S_ISDIR(st.st_mode):
                if real in visited_dirs:
                    skipped.twice.append(rel + "/")
                    continue
                visited_dirs.add(real)
                visit(path, rel + "/")
            elif not stat.S_ISREG(st.st_mode):
                skipped.special.append(rel)
            elif not glob_matches(rel, patterns):
                skipped.unmatched += 1
            elif real in seen:
                skipped.twice.append(rel)
            else:
                seen.add(real)
                out.append((rel, path, st))

    visit(top, "")
    return out


def find_files(specs: Iterable[str], patterns: Sequence[str] = ()) -> tuple[list[Found | None], list[str]]:
    """The files of ``specs`` in order (None where ``-``, standard input, stands) and the
    warnings of what was skipped. Raises :class:`ConfigError` for a missing path, a second
    ``-``, or directories that hold no file to read."""
    seen: set[str] = set()
    skipped = Skipped()
    found: list[Found | None] = []
    stdin_given = False
    empty_dirs: list[str] = []
    for spec in specs:
        if spec == STDIN:
            if stdin_given:
                raise ConfigError("standard input ('-') given twice", hint="give -i - once")
            stdin_given = True
            found.append(None)
            continue
        path = Path(spec)
        try:
            st = os.stat(path)
        except OSError:
            raise ConfigError(
                f"input file not found: {spec}", hint="check the path given to -i/--input"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            files = walk_directory(spec, patterns, seen, skipped)
            if not files:
                empty_dirs.append(spec)
            for rel, file_path, fst in files:
                shown = os.path.normpath(os.path.join(spec, rel))
                found.append(Found(rel, shown, file_path, compression_of_name(rel), fst.st_size))
            continue
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"input is not a regular file or a directory: {spec}")
        real = os.path.realpath(path)
        if real in seen:
            skipped.twice.append(spec)
            continue
        seen.add(real)
        found.append(Found(spec, spec, path, compression_of_name(spec), st.st_size))
    if empty_dirs and not any(f is not None for f in found) and not stdin_given:
        which = ", ".join(empty_dirs)
        globs = f" matching --glob {' '.join(patterns)}" if patterns else ""
        raise ConfigError(
            f"no input files: {which} holds no readable file{globs}",
            hint="check the directory and the --glob patterns (hidden files are skipped)",
        )
    return _unique_names(found), skipped.warnings()


def _unique_names(found: list[Found | None]) -> list[Found | None]:
    """Every name once: a name already taken falls back to the path as given, then a number."""
    taken: set[str] = {STDIN_NAME} if any(f is None for f in found) else set()
    out: list[Found | None] = []
    for f in found:
        if f is None:
            out.append(None)
            continue
        name = f.name
        if name in taken:
            name = f.shown
        n = 2
        while name in taken:
            name = f"{f.shown} ({n})"
            n += 1
        taken.add(name)
        out.append(f if name == f.name else Found(name, f.shown, f.path, f.compression, f.size))
    return out
