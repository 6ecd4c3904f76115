"""A cache of model responses on disk (``--lm-cache DIR``): the same request to the same model
is answered from the cache, at no cost and with no request sent.

A CI job asked the same question of the same logs on every push pays for the same answers
again; with a cache kept between jobs, re-running the same job on the same input makes no
model request at all (the code in the cells still runs, in fresh containers).

The key is the model's name (as configured) and the request's digest
(:func:`rlm_sandbox.rlm.digest.request_digest`: the messages, without the volatile budget
line). An entry holds the response's text and the usage it had, the model and the digest
(checked on every read, so a file renamed or planted under another key is a miss), and
never a key, a header or a URL: nothing of the client's configuration.

Several processes may share one directory (parallel CI jobs, a matrix): an entry is written
to a temporary file in its own directory, flushed, fsynced and renamed over its name, so a
reader sees a whole entry or none; two writers of one key both write the same answer. The
cache is bounded (``--lm-cache-max-bytes``): when a process finds it larger, it removes the
entries used longest ago (a hit refreshes an entry's time) until it is under 90 % of the
bound. Each process counts what it adds and looks at the directory again when its count
says the bound may be passed, so with several writers the directory may exceed the bound by
what they added since their last look, never more.

Entries are untrusted on read (a cache restored from elsewhere): bounded in size, checked
against a schema; anything wrong is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
#: An entry larger than this is not stored, and not read (a response is far smaller).
MAX_ENTRY_BYTES = 16 << 20
#: A temporary file older than this is a writer that died: removed when the cache is trimmed.
STALE_TMP_S = 3600.0
KEEP_AFTER_TRIM = 0.9
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class CachedResponse:
    """What the cache gives back: the text and the usage the response had when it was paid."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    served_model: str | None


def cache_key(model: str, digest: str) -> str:
    return hashlib.sha256(f"v{FORMAT}\0{model}\0{digest}".encode()).hexdigest()


class LMCache:
    """One cache directory, used by any number of threads and processes at once."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(directory)
        self.max_bytes = max_bytes
        self._dir = self.root / f"v{FORMAT}"
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._estimate: int | None = None  # bytes in the directory, as this process believes

    def _path(self, key: str) -> Path:
        return self._dir / key[:2] / f"{key}.json"

    # ---- reading

    def get(self, model: str, digest: str) -> CachedResponse | None:
        """The response stored for this request, or None (missing, unreadable, or not one)."""
        path = self._path(cache_key(model, digest))
        try:
            with open(path, "rb") as f:
                blob = f.read(MAX_ENTRY_BYTES + 1)
        except OSError:
            return None
        if len(blob) > MAX_ENTRY_BYTES:
            return None
        entry = _parse(blob, model, digest)
        if entry is not None:
            with contextlib.suppress(OSError):
                os.utime(path)  # used now: the last to be evicted
        return entry

    # ---- writing

    def put(
        self,
        model: str,
        digest: str,
        text: str,
        prompt_tokens: int,
        completion_tokens: int,
        served_model: str | None = None,
    ) -> bool:
        """Store a response (after it arrived); False when it is too large to keep."""
        entry = {
            "format": FORMAT,
            "model": model,
            "request_sha256": digest,
            "served_model": served_model,
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "text": text,
            "stored_at": round(time.time(), 3),
        }
        blob = json.dumps(entry, ensure_ascii=False).encode("utf-8", errors="surrogatepass")
        if len(blob) > min(MAX_ENTRY_BYTES, self.max_bytes):
            return False
        path = self._path(cache_key(model, digest))
        path.parent.mkdir(exist_ok=True, mode=0o700)
        write_atomically(path, blob)
        with self._lock:
            if self._estimate is None:
                self._estimate = self._size()
            else:
                self._estimate += len(blob)
            over = self._estimate > self.max_bytes
        if over:
            self.trim()
        return True

    # ---- the bound

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every entry; stale temporary files are removed."""
        out = []
        now = time.time()
        for shard in self._dir.iterdir() if self._dir.is_dir() else ():
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                try:
                    st = path.stat()
                except OSError:
                    continue  # removed by another process meanwhile
                if path.name.startswith(TMP_PREFIX):
                    if now - st.st_mtime > STALE_TMP_S:
                        with contextlib.suppress(OSError):
                            path.unlink()
                    continue
                out.append((st.st_mtime, st.st_size, path))
        return out

    def _size(self) -> int:
        return sum(size for _t, size, _p in self._entries())

    def trim(self) -> int:
        """Remove the entries used longest ago until the cache is under 90 % of its bound;
        returns the bytes it holds then. Safe against other processes trimming at once."""
        entries = sorted(self._entries())
        total = sum(size for _t, size, _p in entries)
        goal = int(self.max_bytes * KEEP_AFTER_TRIM)
        for _t, size, path in entries:
            if total <= goal:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
        with self._lock:
            self._estimate = total
        return total

    def size(self) -> int:
        """Bytes the entries take now (a fresh look at the directory)."""
        return self._size()


def write_atomically(path: Path, blob: bytes) -> None:
    """``blob`` at ``path`` whole or not at all: a temporary file in the same directory,
    flushed and fsynced, then renamed over ``path`` (atomic on POSIX)."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _parse(blob: bytes, model: str, digest: str) -> CachedResponse | None:
    """An entry read back, if it is one for exactly this request; else None."""
    try:
        entry: Any = json.loads(blob)
    except (ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return None
    if entry.get("model") != model or entry.get("request_sha256") != digest:
        return None
    text, pt, ct = entry.get("text"), entry.get("prompt_tokens"), entry.get("completion_tokens")
    served = entry.get("served_model")
    if not isinstance(text, str) or not (served is None or isinstance(served, str)):
        return None
    if not all(type(n) is int and 0 <= n < 1 << 40 for n in (pt, ct)):
        return None
    return CachedResponse(text, pt, ct, served[:200] if served else None)
