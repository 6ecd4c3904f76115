"""The trace's vocabulary: every event declared once — its name, its fields, their types.

One registry (:data:`EVENTS`), in the spirit of execnet's message types: the writer checks
every event it emits against its declaration (an undeclared event or field is a bug of ours,
caught the first time it runs), and every reader — ``trace show``/``summary``/``html``, the
live tree, ``-v`` and ``replay`` — turns a line into a typed event with :func:`parse`.

A trace is untrusted input (a file anyone can hand over) and may come from an older or newer
version: a reader never crashes on it and never drops it silently. An event whose name this
version does not know becomes :class:`Unknown`; one whose known fields have the wrong types
(a node id that is a list, a token count that is text) becomes :class:`Malformed` with what
is wrong; fields this version does not know are kept and ignored. Numbers are bounded so no
reader does unbounded work on a hostile value.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_MAX = 1 << 53  # integers and numbers a JavaScript reader (the HTML page) can hold exactly
Int = Annotated[int, Field(ge=-_MAX, le=_MAX)]
Num = Annotated[float, Field(ge=-_MAX, le=_MAX, allow_inf_nan=False)]
Str = str


class Event(BaseModel):
    """Fields every event carries. Readers are lenient about fields they do not know."""

    # Each event type is built when first used: most runs use a few, and the import is on
    # the way to the first model call.
    model_config = ConfigDict(extra="allow", strict=True, frozen=True, defer_build=True)
    name: ClassVar[str] = ""
    #: Shown to listeners only (progress ticks): never written to the trace file.
    notify_only: ClassVar[bool] = False

    event: Str
    run: Str | None = None
    t: Num | None = None  # seconds since the run's trace began (monotonic)
    ts: Num | None = None  # wall-clock time (Unix seconds)


class NodeEvent(Event):
    node: Str | None = None
    depth: Int | None = None


# ---- the run


class RunStart(Event):
    name = "run_start"
    model: Str | None = None
    sub_model: Str | None = None
    task: Str | None = None
    depth: Int | None = None
    max_steps: Int | None = None
    tenant: Str | None = None
    limits: dict[Any, Any] | None = None
    backend: Str | None = None
    unsafe: bool | None = None
    levels: dict[Any, Any] | None = None
    session: bool | None = None
    image_packages: list[Str] | None = None


class _Outcome(Event):
    """The fields of ``--json`` (a run's result, or one question's)."""

    answer: Str | None = None
    status: Str | None = None
    error: Str | None = None
    steps: Int | None = None
    lm_calls: Int | None = None
    tokens: dict[Any, Any] | None = None
    cost_usd: Num | None = None
    wall_s: Num | None = None
    nodes: Int | None = None
    containers: Int | None = None
    max_depth_reached: Int | None = None
    trace: Str | None = None
    unsafe_backend: Str | None = None
    fallback: bool | None = None
    budget: Str | None = None
    models: dict[Any, Any] | None = None
    # An answer too long for a trace event is cut; these still identify the whole of it.
    answer_truncated: bool | None = None
    answer_chars: Int | None = None
    answer_sha256: Str | None = None
    # checked on the host (rlm.citations): [{"file", "line", "quote", "text", "verified", "reason"}]
    citations: list[Any] | None = None
    lm_cache_hits: Int | None = None  # model requests answered by the response cache
    warnings: list[Str] | None = None  # what the run skipped or doubts


class RunEnd(_Outcome):
    name = "run_end"
    timings: dict[Any, Any] | None = None
    pool: dict[Any, Any] | None = None
    engines: list[Any] | None = None
    levels: dict[Any, Any] | None = None
    reason: Str | None = None  # an interrupt: why the run was stopped
    questions: Int | None = None  # a session's
    containers_alive: Int | None = None


class Engines(Event):
    name = "engines"
    engines: list[Any] | None = None
    max_containers: Int | None = None


class EngineWarning(Event):
    name = "engine_warning"
    message: Str | None = None
    engine: Str | None = None
    error: Str | None = None


class Warning(Event):
    """Something the run skipped or doubts (an input given as bytes, files left out of a
    directory): said on stderr and in ``--json``'s ``warnings``. An engine that does not
    answer is an ``engine_warning``."""

    name = "warning"
    message: Str | None = None


class Budget(Event):
    """A budget stopped the run."""

    name = "budget"
    status: Str | None = None
    budget: Str | None = None
    error: Str | None = None


class Error(Budget):
    """The run ended in an error (sandbox, model, or a bug of ours)."""

    name = "error"


# ---- nodes


class NodeBegin(NodeEvent):
    name = "node_begin"
    parent: Str | None = None


class NodeStart(NodeEvent):
    name = "node_start"
    parent: Str | None = None
    container: Str | None = None
    engine: Str | None = None
    start_s: Num | None = None
    pooled: bool | None = None
    prestarted: bool | None = None  # started by the CLI's prestart child, during its imports
    task: Str | None = None


class NodeEnd(NodeEvent):
    name = "node_end"
    status: Str | None = None
    steps: Int | None = None
    answer: Str | None = None
    error: Str | None = None
    wall_s: Num | None = None


class Question(NodeEvent):
    """A session's next question to its root node."""

    name = "question"
    number: Int | None = None
    task: Str | None = None


class Answer(_Outcome):
    """A session's answer to one question."""

    name = "answer"
    node: Str | None = None
    number: Int | None = None


# ---- model calls


class _Call(NodeEvent):
    model: Str | None = None
    call: Int | None = None  # the call's id within the run: pairs start, end, errors


class LMStart(_Call):
    name = "lm_start"
    purpose: Str | None = None
    timeout_s: Num | None = None
    reserved_tokens: Int | None = None
    reserved_cost_usd: Num | None = None


class LMReady(_Call):
    """The run's first model call was made: its prompt was built, so the run could call the
    model from this moment (once per run; ``RLMResult.timings['lm_ready_s']``)."""

    name = "lm_ready"


class LMSent(_Call):
    """... and that first call's request went out: later than ``lm_ready`` only when its
    client had to get ready first, e.g. LiteLLM's import (``timings['first_request_s']``)."""

    name = "lm_sent"


class LMCall(_Call):
    """A model call that answered: what it used and cost, its whole response (for replay)."""

    name = "lm_call"
    purpose: Str | None = None
    served_model: Str | None = None
    prompt_tokens: Int | None = None
    completion_tokens: Int | None = None
    cost_usd: Num | None = None
    latency_s: Num | None = None
    response: Str | None = None
    request_sha256: Str | None = None


class LMCacheHit(_Call):
    """A request answered by the response cache (``--lm-cache``): no call, no cost; its
    response is kept as an ``lm_call``'s is, so ``replay`` can answer it too."""

    name = "lm_cache_hit"
    purpose: Str | None = None
    response: Str | None = None
    request_sha256: Str | None = None


class LMError(_Call):
    name = "lm_error"
    error: Str | None = None


class LMCut(_Call):
    """A call cut short by the run's wall-time budget, not by the model."""

    name = "lm_cut"
    reason: Str | None = None


class LMAbandoned(_Call):
    """The run stopped waiting for a call at its deadline (an ``lm_error`` follows)."""

    name = "lm_abandoned"
    waited_s: Num | None = None
    reserved_tokens: Int | None = None
    reserved_cost_usd: Num | None = None


class LMLate(_Call):
    """An abandoned call's usage, recorded when its thread ended."""

    name = "lm_late"
    prompt_tokens: Int | None = None
    completion_tokens: Int | None = None
    cost_usd: Num | None = None


class LMOverrun(_Call):
    """A call used more than the worst case reserved for it."""

    name = "lm_overrun"
    over: list[Str] | None = None


class SubCall(NodeEvent):
    name = "sub_call"
    kind: Str | None = None  # rlm | lm
    prompt_chars: Int | None = None


class ToolCall(NodeEvent):
    name = "tool_call"
    tool: Str | None = None
    args: Str | None = None
    error: Str | None = None
    duration_s: Num | None = None


# ---- cells and the node's own work


class CellStart(NodeEvent):
    name = "cell_start"
    step: Int | None = None
    index: Int | None = None
    code: Str | None = None


class Cell(CellStart):
    name = "cell"
    output: Str | None = None
    error: Str | None = None
    duration_s: Num | None = None
    wall_s: Num | None = None
    timed_out: bool | None = None
    cited: Int | None = None  # cite() calls the cell made


class Compaction(NodeEvent):
    name = "compaction"
    window: Int | None = None
    tokens_before: Int | None = None
    tokens_after: Int | None = None
    messages_folded: Int | None = None


class SchemaMismatch(NodeEvent):
    name = "schema_mismatch"
    problem: Str | None = None


class Fallback(NodeEvent):
    name = "fallback"
    budget: Str | None = None
    answered: bool | None = None
    skipped: Str | None = None


# ---- progress, for listeners only


class ImageProgress(Event):
    name = "image_progress"
    notify_only = True
    message: Str | None = None


class LoadProgress(NodeEvent):
    name = "load_progress"
    notify_only = True
    sent: Int | None = None
    size: Int | None = None


# ---- what a reader could not use


class Unknown(Event):
    """An event this version does not know (an older or newer trace): shown, not used."""

    name = "(unknown)"


class Malformed(Event):
    """A known event whose fields have the wrong types: shown with what is wrong."""

    name = "(malformed)"
    problem: Str = ""


def _declared(cls: type[Event]) -> list[type[Event]]:
    found = []
    for sub in cls.__subclasses__():
        if sub.name and not sub.name.startswith("("):
            found.append(sub)
        found.extend(_declared(sub))
    return found


#: Every event this version writes or reads, by name.
EVENTS: dict[str, type[Event]] = {cls.name: cls for cls in _declared(Event)}


def parse(raw: Any) -> Event:
    """The typed event of one trace line (an already-decoded JSON value); never raises."""
    if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
        return Malformed.model_construct(event="?", problem="not an event (an object with an 'event' name)")
    cls = EVENTS.get(raw["event"])
    if cls is None:
        return Unknown.model_construct(event=raw["event"], **_base_fields(raw))
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "?"
        value = first.get("input")
        kind = type(value).__name__
        return Malformed.model_construct(event=raw["event"], problem=f"its {where!r} is a {kind}")


def declared(ev: Event, field: str) -> Any:
    """``ev``'s value of ``field`` if its event declares that field (so it has its type), else
    None: a field an event does not declare is another version's, and not this one's to read."""
    return getattr(ev, field) if field in type(ev).model_fields else None


def _base_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The fields every event carries, where they have their types (an unknown event's
    other fields are not this version's to read)."""
    out: dict[str, Any] = {}
    if isinstance(raw.get("run"), str):
        out["run"] = raw["run"]
    for key in ("t", "ts"):
        value = raw.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= _MAX:
            out[key] = float(value)
    return out


def check_emitted(name: str, fields: dict[str, Any]) -> None:
    """The writer's check: the event is declared and carries only declared fields of their
    types. A failure is a bug in the emitter (tests run every emitter), never in a run's input."""
    cls = EVENTS.get(name)
    if cls is None:
        raise ValueError(f"trace event {name!r} is not declared in rlm_sandbox.trace.events")
    undeclared = set(fields) - set(cls.model_fields)
    if undeclared:
        raise ValueError(f"trace event {name!r} has undeclared fields: {sorted(undeclared)}")
    try:
        cls.model_validate({"event": name, **fields}, strict=False)  # Python values, before JSON
    except ValidationError as exc:
        raise ValueError(
            f"trace event {name!r}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        ) from None
