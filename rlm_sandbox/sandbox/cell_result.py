"""What a cell produced, as the host hands it on: :class:`ExecResult`, built from the kernel's
``exec_reply`` frame.

Why it is its own module: the result type is used by everything that runs cells (the
controller's nodes, the pool, tests) without needing the sandbox's lifecycle, and turning a
validated reply into it (outputs decoded, truncation said, citations parsed) is a pure step
of its own, apart from :class:`~rlm_sandbox.sandbox.core.Sandbox`'s waiting and failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlm_sandbox.kernel import protocol as P

from .messages import ExecReply, RawCitation, citations_of


@dataclass(slots=True)
class ExecResult:
    """What a cell produced. ``error`` is ``"Type: message"`` or None."""

    stdout: str
    stderr: str
    error: str | None
    ename: str | None
    evalue: str | None
    traceback: str | None
    duration_s: float
    wall_s: float
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    final: str | None
    citations: list[RawCitation] = field(default_factory=list)  # cite() calls, unchecked

    @property
    def ok(self) -> bool:
        return self.error is None


def exec_result(msg: ExecReply, payload: bytes, cap: int, wall: float) -> ExecResult:
    """The :class:`ExecResult` of a cell's ``exec_reply``: its output, error and citations."""
    out_b, err_b, final_b, *rest = P.split_sizes(payload, msg.sizes)
    out_total, err_total = msg.totals
    stdout = out_b.decode("utf-8", errors="replace")
    stderr = err_b.decode("utf-8", errors="replace")
    if out_total > len(out_b):
        stdout += f"\n[output truncated: {out_total} bytes written, first {len(out_b)} shown]\n"
    if err_total > len(err_b):
        stderr += f"\n[stderr truncated: {err_total} bytes written, first {len(err_b)} shown]\n"
    error = None
    if msg.ename:
        error = f"{msg.ename}: {msg.evalue}" if msg.evalue else msg.ename
    return ExecResult(
        stdout=stdout,
        stderr=stderr,
        error=error,
        ename=msg.ename,
        evalue=msg.evalue,
        traceback=msg.traceback,
        duration_s=msg.duration_s,
        wall_s=wall,
        timed_out=msg.status == "timeout",
        stdout_truncated=out_total > len(out_b),
        stderr_truncated=err_total > len(err_b),
        final=final_b.decode("utf-8", errors="replace") if msg.has_final else None,
        citations=citations_of(rest[0]) if rest else [],
    )
