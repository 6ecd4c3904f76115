"""A sandbox's input file: how a large ``context`` reaches a sandbox on this machine's engine.

Why: through the attach stream every byte crosses dockerd, the containerd shim and PID 1's
relay. 100 MB took 0.55-0.65 s that way and about a CPU-second, on a machine of two cores.
A file on the host's tmpfs, mounted read-only into the container, is mapped by the kernel at
memory speed: 100 MB in about 0.15 s, the host's copy included (``scripts/bench_sandbox.py``).
The kernel never holds a second copy of the bytes either: it decodes straight from the map.

What the container gets, and nothing more: one read-only file at
:data:`~rlm_sandbox.kernel.protocol.INPUT_FILE` holding bytes it was about to receive anyway,
after a random nonce that the load names (so the kernel reads this load's file, or none).
This process creates the file, ``O_EXCL``, in a private directory (0700) of its own under
``/dev/shm`` (else the temp directory), so no other user can put anything else there; it is
emptied as soon as the kernel has built ``context`` (the memory goes back at once) and
removed with the sandbox. A cell sees the file (empty between loads), its size, the uid that
owns it and the directory's random name (in its mountinfo); nothing else of the host.

Only a Docker engine on this machine (a unix socket) can mount it. With any other engine, the
local backend, ``input_file=False``, or a mount the engine refuses, everything streams as
before; a kernel that cannot read the file (an engine in a VM behind a local socket) gets the
same bytes streamed from the file. When the file runs out of room mid-way, what it holds is
streamed and the rest of the input follows it: no input is read twice, standard input
included. ``rlm-sandbox gc`` removes the directories of processes that died (a SIGKILL).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm_sandbox.kernel import protocol as P

from .context_source import FileStart

#: Smaller inputs stream: one or two frames cost less than a file's round trip.
MIN_BYTES = 1 << 20
DIR_PREFIX = "rlm-sandbox-input-"
_SENDFILE_STEP = 8 << 20  # bytes per sendfile call: progress between them
_ROOM_MARGIN = 64 << 20  # what the file leaves free on the host's tmpfs


def spool_root() -> str:
    """Where input files live: the host's shared-memory tmpfs when it is usable (memory
    speed, never written to a disk), else the temp directory."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


@dataclass
class Filled:
    """What one fill put in the file: the nonce (hex), the bytes after it, and for kind
    ``files`` each file's name and byte count in order. ``rest`` holds what did not fit
    (the piece that failed, then the source's remaining pieces): it streams after the file."""

    nonce: str
    size: int
    files: list[list[Any]] | None = None
    rest: Iterator[Any] | None = None
    error: str | None = None


class InputFile:
    """The private file one sandbox's large loads go through (one per sandbox)."""

    def __init__(self, root: str | None = None, *, owner_pid: int | None = None) -> None:
        """``owner_pid``: the process the file is for, when another makes it (a prestart
        child): its pid names the directory, so ``gc`` knows whose it is."""
        owner = os.getpid() if owner_pid is None else owner_pid
        self.dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{owner}-", dir=root or spool_root())
        self.path = os.path.join(self.dir, "input")
        try:
            self._fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
            )
            os.fchmod(self._fd, 0o644)  # the sandbox's user reads it whatever our umask
        except OSError:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @classmethod
    def adopt(cls, directory: str, path: str, fd: int) -> InputFile:
        """The input file a prestart child made for this process (its descriptor passed over)."""
        inp = cls.__new__(cls)
        inp.dir, inp.path, inp._fd = directory, path, fd
        return inp

    def fileno(self) -> int:
        return self._fd

    def has_room(self, size: int) -> bool:
        """Can the file take ``size`` bytes and leave the host's tmpfs some room?"""
        try:
            st = os.statvfs(self.dir)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= size + _ROOM_MARGIN

    def fill(
        self,
        data: Any,
        source: Callable[[int], Iterator[Any]],
        size: int,
        chunk: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> Filled:
        """Write the nonce, then the input; a write that fails (no room) stops the fill and
        leaves the remaining pieces in ``rest``. Errors of the source itself (a cap, a bad
        compressed file) are raised: they stop the load as they would a stream."""
        nonce = secrets.token_bytes(P.INPUT_NONCE_BYTES)
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        _write_all(self._fd, nonce)
        filled = Filled(nonce=nonce.hex(), size=0)
        if isinstance(data, os.PathLike):
            self._send_file(Path(data), size, filled, progress)
            return filled
        pieces = iter(source(chunk))
        for piece in pieces:
            if isinstance(piece, FileStart):
                if filled.files is None:
                    filled.files = []
                filled.files.append([piece.name, 0])
                continue
            try:
                _write_all(self._fd, piece)
            except OSError as exc:
                filled.error = f"{exc.strerror or exc}"
                filled.rest = itertools.chain([piece], pieces)
                return filled
            filled.size += len(piece)
            if filled.files:
                filled.files[-1][1] += len(piece)
            if progress is not None:
                progress(filled.size, size)
        return filled

    def _send_file(
        self, path: Path, size: int, filled: Filled, progress: Callable[[int, int], None] | None
    ) -> None:
        """A plain file goes in by ``sendfile``: no byte of it passes through this process."""
        with open(path, "rb", buffering=0) as f:
            while True:
                try:
                    moved = os.sendfile(self._fd, f.fileno(), filled.size, _SENDFILE_STEP)
                except OSError as exc:
                    filled.error = f"{exc.strerror or exc}"
                    filled.rest = _file_rest(path, filled.size)
                    return
                if not moved:
                    return
                filled.size += moved
                if progress is not None:
                    progress(filled.size, size)

    def replay(self, filled: Filled, chunk: int) -> Iterator[Any]:
        """The same pieces again, read back from the file, then whatever did not fit: for a
        kernel that could not read the file, or a fill that ran out of room."""
        with open(self.path, "rb", buffering=0) as f:
            f.seek(P.INPUT_NONCE_BYTES)
            spans = [(None, filled.size)] if filled.files is None else filled.files
            for name, count in spans:
                if name is not None:
                    yield FileStart(name)
                left = count
                while left > 0:
                    piece = f.read(min(chunk, left))
                    if not piece:
                        raise OSError("the input file shrank while it was read back")
                    left -= len(piece)
                    yield piece
        if filled.rest is not None:
            yield from filled.rest

    def clear(self) -> None:
        """Empty the file: its pages go back to the host as soon as the kernel has ``context``."""
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass

    def close(self) -> None:
        """Remove the file and its directory (a sandbox's close); safe to call twice."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
            shutil.rmtree(self.dir, ignore_errors=True)


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def _file_rest(path: Path, offset: int) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while piece := f.read(4 << 20):
            yield piece


def remove_orphans(root: str | None = None, *, dry_run: bool = False) -> list[str]:
    """Input directories of this user's processes that are gone (killed mid-load, when a
    file may still hold a whole input): removed (``dry_run``: only named)."""
    base = root or spool_root()
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(DIR_PREFIX):
            continue
        pid = name[len(DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path = os.path.join(base, name)
        if os.path.isdir(path) and not os.path.islink(path) and os.stat(path).st_uid == os.getuid():
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
