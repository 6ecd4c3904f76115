"""The kernel's protocol loop: a reader thread routes the host's frames (context chunks straight
into place, each file's chunks after its ``context_file`` frame for kind "files"; replies
to waiting cells, everything else to a queue) and the loop runs one job
at a time: build ``context``, run a cell, stop. Standard library only.

It knows nothing of processes: ``run_cell`` is handed in. Inside the container that is the
kernel process's (output captured at the file-descriptor level, a watchdog, forks handled);
in the host's in-memory test backend it runs the same REPL in a thread.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import threading
from collections.abc import Callable

if __package__:  # imported by the host (the in-memory test backend)
    from . import protocol as P
    from .repl import CellOutcome, CellTimeoutError, HostLink, Repl
else:  # the container's script: the kernel's directory is sys.path[0]
    import protocol as P  # type: ignore[no-redef]
    from repl import CellOutcome, CellTimeoutError, HostLink, Repl  # type: ignore[no-redef]

DEFAULT_OUTPUT_CAP = 64 * 1024

#: What running one cell gives: its outcome, then stdout (capped) and its total size, stderr too.
CellRun = tuple[CellOutcome, bytes, int, bytes, int]


class KernelLoop:
    def __init__(
        self,
        chan: object,
        link: HostLink,
        repl: Repl,
        run_cell: Callable[[str, int, float, int], CellRun],
        input_file: str = P.INPUT_FILE,
    ) -> None:
        self.chan = chan
        self.input_file = input_file  # where the host's input file is (the mount, in a container)
        self.link = link
        self.repl = repl
        self._run_cell = run_cell
        self.jobs: list = []
        self.jobs_cond = threading.Condition()
        self._ctx_kind = "str"
        self._ctx_buf: bytearray | None = None
        self._ctx_chunks: list[bytes] | None = None
        self._ctx_files: list[tuple[str, list[bytes]]] | None = None  # kind "files"
        self._ctx_names: set[str] = set()
        self._ctx_pos = 0
        self._ctx_error: str | None = None
        self._ctx_nonce: bytes | None = None  # a load through the input file (P.INPUT_FILE)
        self._ctx_size = 0

    # ---- reader thread

    def reader(self) -> None:
        try:
            while True:
                header = self.chan.read_frame_header()
                t, n = header["t"], header["len"]
                if t == P.CONTEXT_CHUNK:
                    self._read_context_chunk(n)
                    continue
                if t == P.CONTEXT_BEGIN:
                    self._context_begin(header)
                    if n:
                        self.chan.read_exact(n)
                    continue
                if t == P.CONTEXT_FILE:
                    self._context_file(header)
                    if n:
                        self.chan.read_exact(n)
                    continue
                payload = self.chan.read_exact(n) if n else b""
                if t == P.LLM_REPLY:
                    self.link.deliver(header, payload)
                    continue
                self._post((header, payload))
                if t == P.SHUTDOWN:
                    return
        except (EOFError, OSError, P.FrameError) as exc:
            self._post(({"t": "_eof", "id": 0, "len": 0, "why": str(exc)}, b""))
        finally:
            self.link.close()

    def _read_context_chunk(self, n: int) -> None:
        if self._ctx_nonce is not None:
            self.chan.read_exact(n)
            self._ctx_error = "a context chunk in a load through the input file"
        elif self._ctx_files is not None:
            if not self._ctx_files:
                self.chan.read_exact(n)
                self._ctx_error = "a files context sent a chunk before its first context_file"
                return
            self._ctx_files[-1][1].append(self.chan.read_exact(n))
        elif self._ctx_buf is not None:
            if self._ctx_pos + n > len(self._ctx_buf):
                self._ctx_error = "context chunks exceed the announced size"
                self.chan.read_exact(n)
                return
            self.chan.read_into(memoryview(self._ctx_buf)[self._ctx_pos : self._ctx_pos + n])
            self._ctx_pos += n
        elif self._ctx_chunks is not None:
            self._ctx_chunks.append(self.chan.read_exact(n))
        else:
            self.chan.read_exact(n)
            self._ctx_error = "context chunk without context_begin"

    def _post(self, job: tuple) -> None:
        with self.jobs_cond:
            self.jobs.append(job)
            self.jobs_cond.notify()

    def _next_job(self) -> tuple:
        with self.jobs_cond:
            while not self.jobs:
                self.jobs_cond.wait()
            return self.jobs.pop(0)

    # ---- main loop

    def serve(self) -> int:
        threading.Thread(target=self.reader, name="rlm-reader", daemon=True).start()
        self.chan.send(
            {
                "t": P.READY,
                "id": 1,
                "version": P.PROTOCOL_VERSION,
                "pid": os.getpid(),
                "uid": os.getuid(),
                "python": sys.version.split()[0],
            }
        )
        self.link.next_id = 3
        while True:
            header, payload = self._next_job()
            t = header["t"]
            if t in ("_eof", P.SHUTDOWN):
                return 0
            try:
                if t == P.EXEC_REQUEST:
                    self.run_cell(header, payload)
                elif t == P.CONTEXT_END:
                    self._context_end(header)
            except CellTimeoutError:
                pass  # a late interrupt between cells: nothing to stop

    def _context_begin(self, header: dict) -> None:
        kind, size = header.get("kind"), header.get("size", -1)
        self._ctx_kind = kind if kind in P.CONTEXT_KINDS else "str"
        self._ctx_error = None
        self._ctx_pos = 0
        self._ctx_files = [] if self._ctx_kind == "files" else None
        self._ctx_names: set[str] = set()
        self._ctx_nonce = None
        nonce = header.get("file")
        if nonce is not None:
            try:
                self._ctx_nonce = bytes.fromhex(nonce)
            except (TypeError, ValueError):
                self._ctx_nonce = b""
            if len(self._ctx_nonce) != P.INPUT_NONCE_BYTES or type(size) is not int or size < 0:
                self._ctx_error = "a load through the input file without a valid nonce and size"
            self._ctx_size = size if type(size) is int else 0
            self._ctx_buf, self._ctx_chunks = None, None
        elif self._ctx_files is not None:
            self._ctx_buf, self._ctx_chunks = None, None
        elif type(size) is int and size >= 0:
            self._ctx_buf, self._ctx_chunks = bytearray(size), None
        else:
            self._ctx_buf, self._ctx_chunks = None, []

    def _context_file(self, header: dict) -> None:
        """The chunks that follow are the text of the file ``name`` (kind "files")."""
        name = header.get("name")
        if self._ctx_files is None:
            self._ctx_error = "context_file outside a files context"
        elif not isinstance(name, str) or len(name) > P.MAX_FILE_NAME:
            self._ctx_error = "context_file without a valid name"
        elif name in self._ctx_names:
            self._ctx_error = f"context_file {name!r} sent twice"
        elif self._ctx_nonce is not None:
            count = header.get("bytes")
            if type(count) is not int or count < 0:
                self._ctx_error = f"context_file {name!r} without its byte count"
            else:
                self._ctx_names.add(name)
                self._ctx_files.append((name, count))
        else:
            self._ctx_names.add(name)
            self._ctx_files.append((name, []))

    def _context_end(self, header: dict) -> None:
        reply = {"t": P.CONTEXT_REPLY, "id": header["id"], "status": "ok"}
        if self._ctx_nonce is not None and not self._ctx_error:
            self._context_from_file(reply)
            self.chan.send(reply)
            return
        try:
            if self._ctx_error:
                raise ValueError(self._ctx_error)
            if self._ctx_files is not None:
                raw: bytes | bytearray | list = self._ctx_files
            elif self._ctx_buf is not None:
                if self._ctx_pos != len(self._ctx_buf):
                    raise ValueError(f"context ended after {self._ctx_pos} of {len(self._ctx_buf)} bytes")
                raw = self._ctx_buf
            else:
                raw = b"".join(self._ctx_chunks or [])
            self._ctx_buf = self._ctx_chunks = self._ctx_files = self._ctx_nonce = None
            kind_name, length = self.repl.set_context(self._ctx_kind, raw)
            del raw
            reply.update(type=kind_name, length=length)
        except (ValueError, TypeError, MemoryError, RecursionError) as exc:
            self._ctx_buf = self._ctx_chunks = self._ctx_files = self._ctx_nonce = None
            reply.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
        self.chan.send(reply)

    def _context_from_file(self, reply: dict) -> None:
        """Build ``context`` from the input file the host filled (mapped, never copied whole):
        status ``no_file`` when it cannot be read as announced, so the host streams instead."""
        nonce, size, files = self._ctx_nonce or b"", self._ctx_size, self._ctx_files
        self._ctx_nonce = self._ctx_files = None
        head = len(nonce)
        try:
            with open(self.input_file, "rb") as f:
                if os.fstat(f.fileno()).st_size != head + size:
                    raise ValueError("the input file's size is not the announced one")
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            reply.update(status="no_file", error=f"{type(exc).__name__}: {exc}"[:2000])
            return
        view = memoryview(mapped)
        try:
            if view[:head] != nonce:
                reply.update(status="no_file", error="the input file is not the one announced")
                return
            if files is not None:
                parts, pos = [], head
                if sum(n for _, n in files) != size:
                    raise ValueError("the files' byte counts do not add up to the announced size")
                for name, n in files:
                    parts.append((name, [view[pos : pos + n]]))
                    pos += n
                raw: memoryview | list = parts
            else:
                raw = view[head : head + size]
            kind_name, length = self.repl.set_context(self._ctx_kind, raw)
            reply.update(type=kind_name, length=length)
        except (ValueError, TypeError, MemoryError, RecursionError) as exc:
            reply.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
        finally:
            raw = parts = None  # type: ignore[assignment]
            try:
                view.release()
                mapped.close()
            except BufferError:
                pass  # a slice still held (by an error's traceback): unmapped when it goes

    def run_cell(self, header: dict, payload: bytes) -> None:
        code = payload.decode("utf-8", errors="replace")
        timeout = header.get("timeout")
        timeout = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 60.0
        cap = header.get("output_cap")
        cap = cap if type(cap) is int and cap >= 0 else DEFAULT_OUTPUT_CAP
        for key, attr in (("max_header", "max_header"), ("max_payload", "max_payload")):
            value = header.get(key)
            if type(value) is int and value > 0:
                setattr(self.link, attr, value)
        outcome, out, out_total, err, err_total = self._run_cell(code, header["id"], timeout, cap)
        final = outcome.final.encode("utf-8", errors="replace") if outcome.final is not None else b""
        cited = self.repl.take_citations()
        cites = json.dumps(cited, ensure_ascii=False).encode("utf-8", errors="replace") if cited else b""
        self.chan.send(
            {
                "t": P.EXEC_REPLY,
                "id": header["id"],
                "status": outcome.status,
                "ename": outcome.ename,
                "evalue": (outcome.evalue or "")[:4000] if outcome.ename else None,
                "traceback": (outcome.traceback or "")[-8000:] if outcome.ename else None,
                "duration_s": outcome.duration_s,
                "sizes": [len(out), len(err), len(final), len(cites)],
                "totals": [out_total, err_total],
                "has_final": outcome.final is not None,
            },
            out,
            err,
            final,
            cites,
        )
