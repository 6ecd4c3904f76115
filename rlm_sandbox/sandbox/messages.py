"""Schemas of everything a kernel may send, validated with pydantic before the host acts.

A kernel shares its process with model-written code, so its frames are hostile input:
unknown types and fields are rejected, numbers are bounded, and the payload's layout must
match what the header claims.
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from rlm_sandbox.errors import ProtocolViolation
from rlm_sandbox.kernel import protocol as P

from .frames import RawFrame

MAX_BATCH = P.MAX_BATCH
NonNeg = Annotated[int, Field(ge=0, le=1 << 40)]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)
    id: NonNeg
    len: NonNeg


class Ready(_Msg):
    t: Literal["ready"]
    version: int
    pid: int
    uid: int
    python: Annotated[str, Field(max_length=64)]


class ExecReply(_Msg):
    t: Literal["exec_reply"]
    status: Literal["ok", "error", "timeout"]
    ename: Annotated[str, Field(max_length=256)] | None
    evalue: Annotated[str, Field(max_length=4096)] | None
    traceback: Annotated[str, Field(max_length=16384)] | None
    duration_s: Annotated[float, Field(ge=0, le=1e7)]
    # stdout, stderr, the final answer, and (optional) the cell's citations as JSON
    sizes: Annotated[list[NonNeg], Field(min_length=3, max_length=4)]
    totals: Annotated[list[NonNeg], Field(min_length=2, max_length=2)]
    has_final: bool


class ContextReply(_Msg):
    t: Literal["context_reply"]
    status: Literal["ok", "error", "no_file"]  # no_file: the input file was unreadable, stream it
    type: Annotated[str, Field(max_length=64)] | None = None
    length: int | None = None
    error: Annotated[str, Field(max_length=4096)] | None = None


class LlmRequest(_Msg):
    """A question for the host: ``llm`` (llm_query), ``rlm`` (rlm_query: always a child RLM
    while depth remains) or ``tool`` (a host function by ``name``, JSON arguments as the one
    part). ``output`` is a JSON Schema the answer must satisfy (typed sub-answers)."""

    t: Literal["llm_request"]
    cell: NonNeg
    sizes: Annotated[list[NonNeg], Field(min_length=1, max_length=MAX_BATCH)]
    kind: Literal["llm", "rlm", "tool"] = "llm"
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")] | None = None
    output: dict[str, object] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LlmRequest:
        if (self.kind == "tool") != (self.name is not None):
            raise ValueError("a tool request needs a name, and only a tool request has one")
        if self.kind == "tool" and len(self.sizes) != 1:
            raise ValueError("a tool request carries exactly one JSON part")
        return self


#: One citation as the kernel sends it: [path or null, line, quote]. The host checks it
#: against the original input; here only its shape and size are checked.
RawCitation = tuple[
    Annotated[str, Field(max_length=P.MAX_CITE_PATH)] | None,
    Annotated[int, Field(ge=1, le=1 << 40)],
    Annotated[str, Field(max_length=P.MAX_CITE_QUOTE)],
]


@functools.cache
def _citations() -> TypeAdapter[list[RawCitation]]:
    """Built on first use, not at import: a process that starts a run reaches its first model
    call before it reads a kernel's first reply."""
    return TypeAdapter(Annotated[list[RawCitation], Field(max_length=P.MAX_CITATIONS)])


#: Bytes of a citations part at most: every citation at its longest, UTF-8, JSON-escaped.
MAX_CITATIONS_PART = P.MAX_CITATIONS * 6 * (P.MAX_CITE_PATH + P.MAX_CITE_QUOTE + 32)


def citations_of(part: bytes) -> list[RawCitation]:
    """The citations part of an exec_reply, checked; anything else is a protocol violation."""
    if not part:
        return []
    if len(part) > MAX_CITATIONS_PART:
        raise ProtocolViolation(f"kernel sent {len(part)} bytes of citations (at most {MAX_CITATIONS_PART})")
    try:
        return _citations().validate_json(part, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProtocolViolation(f"kernel sent invalid citations: {first.get('msg')}"[:500]) from None


KernelMessage = Annotated[Ready | ExecReply | ContextReply | LlmRequest, Field(discriminator="t")]


@functools.cache
def _messages() -> TypeAdapter[KernelMessage]:
    """Built on first use (see :func:`_citations`)."""
    return TypeAdapter(KernelMessage)


def validate(frame: RawFrame) -> KernelMessage:
    """Parse a frame's header into its message; any mismatch is a protocol violation."""
    return validate_header(frame.header, len(frame.payload))


def validate_header(header: dict, payload_len: int | None = None) -> KernelMessage:
    """The same checks, from the header alone (its ``len`` stands for the payload): the host
    validates a frame before it reads, or makes room for, a byte of its payload."""
    if payload_len is None:
        payload_len = header.get("len", 0)
    try:
        msg = _messages().validate_python(header)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "header"
        kind = header.get("t")
        raise ProtocolViolation(
            f"kernel sent an invalid {kind!r} frame: {where}: {first.get('msg')}"[:500]
        ) from None
    sizes = getattr(msg, "sizes", None)
    if sizes is not None and sum(sizes) != payload_len:
        raise ProtocolViolation(
            f"kernel's {msg.t} frame claims {sum(sizes)} payload bytes but carries {payload_len}"
        )
    if sizes is None and payload_len:
        raise ProtocolViolation(f"kernel's {msg.t} frame carries an unexpected payload")
    if isinstance(msg, LlmRequest) and msg.id % 2 == 0:
        raise ProtocolViolation(f"kernel started a request with an even id {msg.id} (kernel ids are odd)")
    return msg
