"""A container's stdin/stdout as one raw byte stream, through the engine's attach endpoint.

We speak the HTTP upgrade ourselves (a few lines) instead of digging the socket out of a
client library's private response objects: we know exactly which bytes were consumed by the
HTTP headers, and any that arrived with them are handed back as the stream's first bytes.
Works against a local unix socket and a remote engine over TCP alike.

Writes are bounded in time (a kernel that stops reading cannot block the host forever);
reads block, and :meth:`AttachStream.close` wakes a blocked reader with end-of-file.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

from rlm_sandbox.errors import EngineUnavailable, SandboxError

_MAX_RESPONSE_HEAD = 64 * 1024


class AttachStream:
    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self._sock = sock
        self._leftover = leftover
        self._closed = False

    @property
    def socket(self) -> socket.socket:
        """The connection itself (a prestart child hands it to the run)."""
        return self._sock

    @property
    def leftover(self) -> bytes:
        """Bytes that came with the HTTP upgrade, not yet read."""
        return self._leftover

    def recv(self, n: int = 1 << 18) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of stream (or after close)."""
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        try:
            return self._sock.recv(n)
        except OSError:
            return b""

    def send_all(self, data: bytes | memoryview, timeout_s: float) -> None:
        """Write everything or raise :class:`TimeoutError` when the peer stops reading."""
        send_with_deadline(
            data,
            lambda view: self._sock.send(view, socket.MSG_DONTWAIT),
            self._sock,
            lambda: self._closed,
            timeout_s,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def send_with_deadline(
    data: bytes | memoryview,
    write_some: Callable[[memoryview], int],
    waitable: object,
    closed: Callable[[], bool],
    timeout_s: float,
) -> None:
    """Non-blocking writes until all is sent; a reader that stops for ``timeout_s`` is an
    error, never a host thread blocked forever (shared by the socket and the pipe streams)."""
    view = memoryview(data).cast("B")
    deadline = time.monotonic() + timeout_s
    while view:
        if closed():
            raise BrokenPipeError("stream closed")
        try:
            view = view[write_some(view) :]
            continue
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the sandbox stopped reading its input")
        select.select([], [waitable], [], min(left, 1.0))


def _connect(base_url: str, timeout_s: float) -> tuple[socket.socket, str]:
    url = urlparse(base_url)
    if url.scheme in ("unix", "http+unix") or base_url.startswith("http+docker://"):
        path = url.path or "/var/run/docker.sock"
        if base_url.startswith("http+docker://"):
            path = "/var/run/docker.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        host = "docker"
        target: object = path
    elif url.scheme in ("tcp", "http", "https"):
        sock = socket.socket(socket.AF_INET6 if ":" in (url.hostname or "") else socket.AF_INET)
        host = url.hostname or "localhost"
        target = (host, url.port or 2375)
    else:
        raise SandboxError(
            f"the attach stream does not support engine URL {base_url!r}",
            hint="use a unix:// socket or tcp:// engine (for ssh:// or TLS engines, forward a unix socket)",
        )
    sock.settimeout(timeout_s)
    try:
        sock.connect(target)  # type: ignore[arg-type]
        if url.scheme in ("tcp", "https"):
            from .engines import ssl_context

            ctx = ssl_context(base_url)
            if ctx is not None:
                sock = ctx.wrap_socket(sock, server_hostname=host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise EngineUnavailable(f"cannot reach the Docker engine at {base_url}: {exc}") from None
    return sock, host


def attach(base_url: str, container_id: str, api_version: str, timeout_s: float = 10.0) -> AttachStream:
    """Open stdin+stdout+stderr of a created (not yet started) container as a raw stream."""
    sock, host = _connect(base_url, timeout_s)
    request = (
        f"POST /v{api_version}/containers/{container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n"
        f"Host: {host}\r\nUser-Agent: rlm-sandbox\r\nContent-Type: text/plain\r\n"
        "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    ).encode("ascii")
    try:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise SandboxError(f"the engine closed the attach connection to {container_id[:12]}")
            head += chunk
            if len(head) > _MAX_RESPONSE_HEAD:
                raise SandboxError("the engine's attach response headers are too long")
    except OSError as exc:
        sock.close()
        raise EngineUnavailable(f"attach to {container_id[:12]} failed: {exc}") from None
    head, _, leftover = head.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] not in ("101", "200"):
        sock.close()
        raise SandboxError(f"the engine refused to attach to {container_id[:12]}: {status_line}")
    sock.settimeout(None)
    if isinstance(sock, ssl.SSLSocket):
        return AttachStream(_tls_relay(sock, leftover, container_id[:12]))
    return AttachStream(sock, leftover)


def _tls_relay(tls: ssl.SSLSocket, leftover: bytes, name: str) -> socket.socket:
    """A plain socket whose peer is ``tls``, pumped by one thread that owns the TLS object.

    A TLS connection must not be read and written from two threads at once, and a blocking
    write could deadlock against a kernel that is itself blocked writing to us. So one thread
    moves bytes both ways with non-blocking calls and bounded buffers, and the rest of the
    engine keeps the plain-socket stream it already knows.
    """
    ours, theirs = socket.socketpair()
    tls.setblocking(False)
    theirs.setblocking(False)
    cap = 4 << 20

    def pump() -> None:
        to_local, to_remote = bytearray(leftover), bytearray()
        remote_open = local_open = True
        try:
            while (remote_open or to_local) and (local_open or to_remote):
                readers = []
                if remote_open and len(to_local) < cap:
                    readers.append(tls)
                if local_open and len(to_remote) < cap:
                    readers.append(theirs)
                writers = ([theirs] if to_local else []) + ([tls] if to_remote else [])
                if not (remote_open and tls.pending()):
                    r, w, _ = select.select(readers, writers, [], 1.0)
                else:
                    r, w = [tls], []
                if tls in r:
                    try:
                        data = tls.recv(1 << 18)
                        if data:
                            to_local += data
                        else:
                            remote_open = False
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                if theirs in r:
                    try:
                        data = theirs.recv(1 << 18)
                        if data:
                            to_remote += data
                        else:
                            local_open = False
                    except BlockingIOError:
                        pass
                if to_local and theirs in w:
                    try:
                        del to_local[: theirs.send(to_local)]
                    except BlockingIOError:
                        pass
                if to_remote and tls in w:
                    try:
                        del to_remote[: tls.send(to_remote)]
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                if not remote_open and not to_local:
                    break
        except OSError:
            pass
        finally:
            for s in (theirs, tls):
                try:
                    s.close()
                except OSError:
                    pass

    threading.Thread(target=pump, daemon=True, name=f"tls-attach-{name}").start()
    return ours
