"""Running a replay: the user's configuration with only the recorded answers from the trace,
a local server playing them, fresh containers, then the comparison."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from rlm_sandbox.replay.compare import ReplayReport, compare
from rlm_sandbox.replay.policy import ReplayPolicy
from rlm_sandbox.replay.recording import Recording, TraceNotReplayable
from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.testing import ScriptedModelServer
from rlm_sandbox.trace.writer import read_trace

_SHAPE = {"depth": "--depth", "max_steps": "--max-steps"}
"""Settings that shape the prompts (the system prompt states them): a replay at other
values diverges at its first request, so these are the only ones a trace may supply."""


def replay_config(
    recording: Recording,
    base: Any,
    *,
    api_base: str,
    trace: str,
    origin: Callable[[str], str] | None = None,
) -> Any:
    """The replay's configuration: everything from ``base`` (the user's flags and settings,
    with the defaults of ``run``), only the recorded answers from the trace.

    A trace is untrusted input: a crafted one must not choose the tenant, raise a budget,
    lift the wall-time limit or the container cap. Its ``limits`` and ``tenant`` are
    ignored. ``depth`` and ``max_steps`` shape the prompts, so the recorded values are used
    when they fit the user's own settings: a value the user gave as a flag wins; one from
    their settings (``origin`` says where each came from) is a ceiling the recording may
    not exceed; and the recorded depth must fit the user's container caps (every level of
    the recursion needs a container), so a deeper trace cannot start more containers at
    once than the user's ``max_containers`` allows. Depth on its own spends nothing: the
    containers, nodes, calls, tokens, cost and time it could use are all the user's limits.
    """
    where = origin or (lambda _name: "default")
    values = base.model_dump()
    for name, flag in _SHAPE.items():
        recorded = _recorded_int(recording.start, name)
        source = where(name)
        if recorded is None or source.startswith("flag"):
            continue
        ceiling = getattr(base, name)
        if source != "default" and recorded > ceiling:
            raise TraceNotReplayable(
                f"the trace was recorded with {name} {recorded}; your settings allow at most "
                f"{ceiling} ({source})",
                hint=f"pass {flag} {recorded} to replay it at the recorded {name}",
            )
        values[name] = recorded
    caps = [("max_containers", base.max_containers)]
    tenant = base.tenants.get(base.tenant)
    if tenant is not None and tenant.max_containers is not None:
        caps.append((f"tenant {base.tenant!r} max_containers", tenant.max_containers))
    for label, cap in caps:
        if values["depth"] > cap:
            raise TraceNotReplayable(
                f"the replay would run at depth {values['depth']}, but your {label} is {cap}: "
                "every level of the recursion needs a container of its own",
                hint=f"raise --max-containers to at least {values['depth']}, or pass --depth "
                "(the replay then diverges at its first request)",
            )
    # Every model call goes to the local replay server, whatever models the settings name.
    # ... and none is answered from a response cache: each must reach the replay, to be compared.
    values |= {"api_base": api_base, "trace": trace, "depth_models": {}, "lm_cache": None}
    values["sandbox"] = values["sandbox"] | {"backend": "docker"}
    try:
        return type(base).model_validate(values)
    except ValidationError as exc:
        raise TraceNotReplayable(f"the trace cannot be replayed with these settings: {exc}") from None


def _recorded_int(start: dict[str, Any], name: str) -> int | None:
    """A shape setting of the recorded run, if it is a plain integer within its bounds."""
    value = start.get(name)
    if type(value) is not int:
        return None
    field = RLMConfig.model_fields[name]
    low = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), 1)
    high = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), None)
    if value < low or (high is not None and value > high):
        raise TraceNotReplayable(
            f"the trace's {name} ({value}) is outside {low}..{high}",
            hint="give a trace written by --trace",
        )
    return value


def run_replay(
    recording: Recording,
    context: Any,
    *,
    trace: str,
    base_config: Any = None,
    origin: Callable[[str], str] | None = None,
    task: str | None = None,
    listeners: tuple[Any, ...] = (),
    run_id: str | None = None,
) -> ReplayReport:
    """Play the recording again in fresh containers and compare; needs no model and no key."""
    policy = ReplayPolicy(recording)
    with ScriptedModelServer(policy, served_name="replay") as server:
        config = replay_config(
            recording, base_config or RLMConfig(), api_base=server.url, trace=trace, origin=origin
        )
        rlm = RLM(model=server.model_name, config=config, api_key=server.api_key)
        rlm.listeners.extend(listeners)
        rlm.run(context=context, task=task or recording.task, run_id=run_id)
    return compare(recording, read_trace(trace), policy.served, trace=trace)
