"""Generated service logs whose true answers are known (disk errors, the needle's line), so an
end-to-end run can be checked exactly, at any size, fast."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_NEEDLE = "The secret code is QX-4417"
DISK_PHRASE = "ERROR disk"


@dataclass
class LogStats:
    """The truth about a generated log, so a run's answer can be checked exactly."""

    path: Path | None
    size_bytes: int
    lines: int
    disk_errors: int
    needle: str | None
    needle_line: int | None = None
    """1-based line number of the needle, or None."""
    text: str | None = field(default=None, repr=False)
    """The log itself when no path was given (small logs for tests)."""


_SERVICES = ["api-gateway", "auth", "billing", "search", "storage", "scheduler", "mailer", "cache"]
_PATHS = [
    "/api/v1/users",
    "/api/v1/orders",
    "/api/v1/search",
    "/api/v1/invoices",
    "/healthz",
    "/api/v2/items",
]
_METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE"]


def _body_pool(rng_seed: int, size: int = 1024) -> list[str]:
    """Pre-rendered ``LEVEL service message`` bodies: per-line work is then one f-string.

    None of them contains ``ERROR disk`` or any needle phrase, so the truth stays exact.
    """
    import random

    rng = random.Random(rng_seed)
    pool: list[str] = []
    for _ in range(size):
        service = rng.choice(_SERVICES)
        r = rng.random()
        if r < 0.55:
            status = rng.choice([200, 200, 200, 201, 204, 304, 404])
            body = (
                f"INFO  {service:<11} {rng.choice(_METHODS)} {rng.choice(_PATHS)}/{rng.randrange(1, 99999)} "
                f"{status} in {rng.randrange(1, 900)}ms"
            )
        elif r < 0.70:
            body = f"DEBUG {service:<11} cache lookup key=user:{rng.randrange(1, 10**6)} hit={rng.choice(['true', 'false'])}"
        elif r < 0.80:
            body = f"INFO  {service:<11} disk check ok: /dev/sd{rng.choice('abc')}1 {rng.randrange(10, 80)}% used"
        elif r < 0.90:
            body = (
                f"WARN  {service:<11} slow query on table {rng.choice(['orders', 'users', 'events'])} "
                f"took {rng.randrange(1000, 9000)}ms"
            )
        elif r < 0.95:
            body = f"WARN  {service:<11} disk usage at {rng.randrange(85, 99)}% on /var/lib/{service}"
        else:
            body = (
                f"ERROR {service:<11} database connection reset by peer "
                f"(pool={rng.randrange(1, 32)}, retry={rng.randrange(1, 5)})"
            )
        pool.append(body)
    return pool


def _iter_log_chunks(
    size_bytes: int, seed: int, needle: str | None, error_every: int, stats: LogStats
) -> Iterator[str]:
    """Yield the log in ~1 MB chunks, updating ``stats`` as lines are produced."""
    import datetime
    import random

    rng = random.Random(seed)
    pool = _body_pool(seed)
    mask = len(pool) - 1
    start = datetime.datetime(2024, 3, 1, tzinfo=datetime.UTC)
    needle_at = int(size_bytes * 0.7) if needle is not None else -1
    written = 0
    lines = 0
    disk_errors = 0
    ms = 0
    last_sec = -1
    prefix = ""
    buf: list[str] = []
    buf_len = 0
    devices = ["/dev/sdb1", "/dev/sdc1", "/dev/nvme0n1p2"]
    bits = rng.getrandbits
    while written < size_bytes or (needle_at >= 0 and stats.needle_line is None):
        r = bits(40)
        ms += 1 + (r & 0xFF)
        sec = ms // 1000
        if sec != last_sec:
            last_sec = sec
            prefix = (start + datetime.timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S")
        lines += 1
        rid = (r >> 8) & 0xFFFFFFFF
        if needle_at >= 0 and stats.needle_line is None and written >= needle_at:
            line = f"{prefix}.{ms % 1000:03d}Z [req-{rid:08x}] NOTICE vault       {needle}\n"
            stats.needle_line = lines
            written += len(line.encode()) - len(line)  # the needle may be non-ASCII
        elif lines % error_every == 0:
            line = (
                f"{prefix}.{ms % 1000:03d}Z [req-{rid:08x}] {DISK_PHRASE} failure on {devices[rid % 3]}: "
                f"I/O error, sector {rid % 9999991}\n"
            )
            disk_errors += 1
        else:
            line = f"{prefix}.{ms % 1000:03d}Z [req-{rid:08x}] {pool[rid & mask]}\n"
        buf.append(line)
        n = len(line)  # generated lines are ASCII: characters == bytes
        written += n
        buf_len += n
        if buf_len >= 1 << 20:
            yield "".join(buf)
            buf.clear()
            buf_len = 0
    if buf:
        yield "".join(buf)
    stats.lines = lines
    stats.size_bytes = written
    stats.disk_errors = disk_errors


def generate_log(
    path: str | Path | None,
    size_bytes: int,
    *,
    seed: int = 0,
    needle: str | None = DEFAULT_NEEDLE,
    error_every: int = 251,
) -> LogStats:
    """Write a deterministic, realistic-looking service log of about ``size_bytes``.

    Every ``error_every``-th line is an ``ERROR disk`` failure (no other line contains that
    phrase) and the needle, if any, sits on one line about 70% of the way in. With a path the
    log is streamed to disk in chunks (100 MB never sits in memory); without one it is
    returned as ``stats.text``. Same arguments, same bytes.
    """
    if error_every < 1:
        raise ValueError("error_every must be >= 1")
    stats = LogStats(
        path=Path(path) if path is not None else None, size_bytes=0, lines=0, disk_errors=0, needle=needle
    )
    chunks = _iter_log_chunks(max(0, size_bytes), seed, needle, error_every, stats)
    if path is None:
        stats.text = "".join(chunks)
        return stats
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for chunk in chunks:
            f.write(chunk)
    return stats
