"""What a project's ``rlm-sandbox.toml`` may decide, and the projects the user trusts.

A project file comes with the directory a person runs in, often a cloned repository whose
author is not that person. Read as the user's own settings, such a file could send the input
and the API key to a server of its choosing, write the trace over any file the user can
write, move the containers to a foreign Docker engine, weaken their isolation or lift a
budget. So a project file is untrusted input: it may only *tighten* what the user's own
settings (flags, ``RLM_SANDBOX_*``, the user file, the built-in defaults) allow.

Every setting has a class in :data:`PROJECT_RULES` (a test fails when a setting has none):

======== ============================================================================
free     shapes how a run goes and nothing more: a project file sets it (``recursion``)
model    which model answers: a project file may pick one *of the provider the user
         chose* (the provider receives the input and the key; ``api_base`` is user-only)
limit    a budget or a resource limit: a project file may lower it, never raise it
runtime  the container runtime: a project file may only move to gVisor (``runsc``)
user     where the input, the key or files go, or whose limits apply: never from a
         project file (``api_base``, ``docker_url``, ``engines``, ``trace``, ``tenant``)
======== ============================================================================

A project the user trusts explicitly (``--trust-project`` for one command, or a record made
by ``rlm-sandbox config trust``) is read like the user's own file. A record names the file
(its directory resolved) and the SHA-256 of its content: a file that changed since is
untrusted again. Every value dropped is reported with the reason (:class:`Ignored`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.sizes import parse_size

TRUST_FILE = "trusted-projects.json"
MAX_PROJECT_FILE_BYTES = 1 << 20  # a settings file is a few hundred bytes; a huge one is an attack


class Kind(StrEnum):
    FREE = "free"
    MODEL = "model"
    LIMIT = "limit"
    RUNTIME = "runtime"
    USER = "user"


def size_bytes(text: str) -> float:
    """A Docker size (``512m``, ``2g``, ``1048576``) in bytes, for comparing limits."""
    try:
        return float(parse_size(str(text)))
    except ValueError:
        return math.inf


@dataclass(frozen=True)
class Rule:
    """What a project file may do with one setting.

    ``what`` says what the setting decides (it ends every refusal). For a ``limit``,
    ``unset`` is what ``None`` means when comparing (no limit = infinity) and ``measure``
    turns a value into a number where lower is tighter."""

    kind: Kind
    what: str
    unset: float = math.inf
    measure: Callable[[Any], float] = float


def _byte_size(value: Any) -> float:
    """A byte count as the settings read it (``8g``, ``512m``, bytes); unreadable: infinite."""
    try:
        return float(parse_size(value))
    except (TypeError, ValueError):
        return math.inf


_BUDGET = "a budget"
PROJECT_RULES: dict[str, Rule] = {
    # which model answers: within the provider the user chose
    "model": Rule(Kind.MODEL, "the root model"),
    "sub_model": Rule(Kind.MODEL, "the model of sub-calls"),
    "depth_models": Rule(Kind.MODEL, "the model of a level"),
    # where data, keys and files go, or whose limits apply
    "api_base": Rule(Kind.USER, "the model server receives your input and your provider's API key"),
    "docker_url": Rule(Kind.USER, "the Docker engine receives your input and runs the code"),
    "engines": Rule(Kind.USER, "these Docker engines receive your input and run the code"),
    "trace": Rule(Kind.USER, "the trace file is written with your input, prompts and outputs"),
    "tenant": Rule(Kind.USER, "the tenant decides whose limits and shared budget apply"),
    # budgets: lower is tighter
    "max_steps": Rule(Kind.LIMIT, _BUDGET),
    "depth": Rule(Kind.LIMIT, _BUDGET),
    "max_lm_calls": Rule(Kind.LIMIT, _BUDGET),
    "max_tokens": Rule(Kind.LIMIT, _BUDGET),
    "max_cost": Rule(Kind.LIMIT, _BUDGET),
    "timeout": Rule(Kind.LIMIT, _BUDGET),
    "max_containers": Rule(Kind.LIMIT, _BUDGET),
    "max_concurrency": Rule(Kind.LIMIT, _BUDGET),
    # unset means "automatic" (up to 4 warm containers): a project may only turn it off
    "pool_size": Rule(Kind.LIMIT, "the warm pool", unset=0.0),
    "lm_timeout": Rule(Kind.LIMIT, "a model call's limit"),
    "lm_retries": Rule(Kind.LIMIT, "a model call's limit"),
    "lm_max_tokens": Rule(Kind.LIMIT, "a model call's limit"),
    # each retry of a typed answer is one more model call: fewer is tighter
    "schema_retries": Rule(Kind.LIMIT, "the retries of a typed answer"),
    "tenants": Rule(Kind.LIMIT, "a tenant's limit"),
    # isolation of each container
    "cell_timeout": Rule(Kind.LIMIT, "a container limit"),
    "memory": Rule(Kind.LIMIT, "a container limit", measure=size_bytes),
    "cpus": Rule(Kind.LIMIT, "a container limit"),
    "runtime": Rule(Kind.RUNTIME, "the container runtime"),
    # what the host holds of a sandbox's requests (sandbox/held.py); unset = automatic, at
    # least 1 GiB: compared against that floor, so a project file can only go below it
    "max_held_bytes": Rule(Kind.LIMIT, "a bound on the host's memory"),
    "max_run_held_bytes": Rule(Kind.LIMIT, "a bound on the host's memory", unset=float(1 << 30)),
    "held_stall_timeout": Rule(Kind.LIMIT, "a bound on the host's memory"),
    # the input file's read-only mount (sandbox/input_file.py): a project may only turn it off
    "input_file": Rule(Kind.LIMIT, "whether the input reaches the container through a mounted file"),
    "image_packages": Rule(Kind.USER, "packages change what is installed in the sandbox image"),
    # the input and the response cache
    "max_input_bytes": Rule(Kind.LIMIT, "the cap on the input", measure=_byte_size),
    "lm_cache": Rule(Kind.USER, "the cache stores your prompts and its entries answer the model's requests"),
    "lm_cache_max_bytes": Rule(Kind.LIMIT, "the bound of the response cache", measure=_byte_size),
    # rlm-sandbox serve: how long running runs may finish after SIGTERM (lower is tighter)
    "serve_grace_s": Rule(Kind.LIMIT, "the service's shutdown grace period"),
    # behaviour only: every budget above still holds
    "recursion": Rule(Kind.FREE, "how llm_query starts children"),
}
# Classified before they exist, so the day they become settings a project file cannot set
# them by accident: host functions the code may call, the backend (deliberately a flag only today) and the pids limit.
RESERVED_RULES: dict[str, Rule] = {
    "tools": Rule(Kind.USER, "tools run on this machine with your rights"),
    "backend": Rule(Kind.USER, "the backend decides whether there is a sandbox at all"),
    "pids": Rule(Kind.LIMIT, "a container limit"),
}
TENANT_RULES: dict[str, Rule] = {
    "max_containers": Rule(Kind.LIMIT, "a tenant's limit"),
    "max_cost": Rule(Kind.LIMIT, "a tenant's limit"),
    "max_input_bytes": Rule(Kind.LIMIT, "a tenant's limit", measure=_byte_size),
    "max_runs": Rule(Kind.LIMIT, "a tenant's limit"),
    "max_queued": Rule(Kind.LIMIT, "a tenant's limit"),
    # rlm-sandbox serve never reads a project file's tenants at all; this is the second lock
    "token_sha256": Rule(Kind.USER, "a tenant's token decides who may use the service"),
}
STRONGER_RUNTIMES = ("runsc",)


def rule_for(name: str) -> Rule:
    """The rule of a setting; one without a class is treated as user-only (never silently free)."""
    return PROJECT_RULES.get(name) or RESERVED_RULES.get(name) or Rule(Kind.USER, "an unclassified setting")


@dataclass(frozen=True)
class Ignored:
    """One value of a project file that was not applied, and why."""

    setting: str  # e.g. "max_cost", "tenants.team-a.max_cost", "depth_models.1"
    value: Any  # as it may be shown (a password in a URL masked)
    reason: str
    path: Path

    def line(self) -> str:
        return f"ignored {self.setting} = {_shown(self.value)} from project file {self.path}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"setting": self.setting, "value": self.value, "source": f"project file {self.path}",
                "reason": self.reason}  # fmt: skip


IGNORED_HINT = (
    "to let this project file decide them: `rlm-sandbox config trust` (remembered for this file's "
    "current content) or --trust-project (this command only)"
)


def _shown(value: Any, limit: int = 80) -> str:
    # repr() escapes control characters and invisible format characters, so a value from a
    # hostile file cannot disguise itself on the terminal.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- judging a project file against the user's own settings


def provider_of(model: str | None) -> str | None:
    """The LiteLLM provider a model string names (``openai`` of ``openai/gpt-4o``), or None
    when it names none (LiteLLM would guess) or looks like a URL."""
    if not model or "/" not in model or "://" in model:
        return None
    return model.split("/", 1)[0].strip().lower() or None


def user_providers(baseline: Any) -> set[str]:
    models = [baseline.model, baseline.sub_model, *dict(baseline.depth_models or {}).values()]
    return {p for p in map(provider_of, models) if p}


def judge(
    data: Mapping[str, Any],
    full: Any,
    baseline: Any,
    applies: Callable[..., bool],
    path: Path,
    shown: Callable[[str, Any], Any] = lambda _n, v: v,
) -> tuple[dict[str, Any], list[Ignored]]:
    """Split a project file's values into those it may set and those it may not.

    ``full`` are the settings with the project file applied as written, ``baseline`` those
    without it (the user's own); ``applies(*path)`` says whether the project's value at
    ``path`` takes effect (a flag or variable above it shadows it). Returns the data to apply
    and what was dropped. Values equal to the user's are kept: they change nothing.
    """
    kept: dict[str, Any] = {}
    ignored: list[Ignored] = []
    providers = user_providers(baseline)
    for key, raw in data.items():
        name = key.lower()
        rule = rule_for(name)
        if name == "tenants" and isinstance(raw, Mapping):
            kept[key] = _judge_tenants(raw, full, baseline, applies, path, ignored)
            continue
        if name == "depth_models" and isinstance(raw, Mapping):
            kept[key] = _judge_depth_models(raw, full, baseline, applies, providers, path, ignored)
            continue
        if not applies(name):
            kept[key] = raw  # shadowed by a flag or a variable: changes nothing
            continue
        new, old = getattr(full, name, None), getattr(baseline, name, None)
        reason = None if new == old else _refusal(rule, new, old, providers)
        if reason is None:
            kept[key] = raw
        else:
            ignored.append(Ignored(name, shown(name, new), reason, path))
    return kept, ignored


def _refusal(rule: Rule, new: Any, old: Any, providers: set[str]) -> str | None:
    """Why a project file may not change a setting from ``old`` to ``new`` (None: it may)."""
    if rule.kind is Kind.FREE:
        return None
    if rule.kind is Kind.USER:
        return f"{rule.what}, so only your own settings choose it"
    if rule.kind is Kind.LIMIT:
        if _measure(rule, new) <= _measure(rule, old):
            return None
        return f"a project file may only lower {rule.what} (yours: {_limit_text(old)})"
    if rule.kind is Kind.RUNTIME:
        if new in STRONGER_RUNTIMES:
            return None
        yours = repr(old) if old else "the engine's default"
        return f"a project file may only move containers to gVisor (runtime = 'runsc'); yours: {yours}"
    # Kind.MODEL
    if provider_of(new) in providers:
        return None
    chosen = ", ".join(sorted(providers)) or "none: you named no model"
    return (
        f"a project file may pick {rule.what} only from the provider you chose ({chosen}); the "
        "provider receives your input and your key (pass --model, or set it in your own settings)"
    )


def _measure(rule: Rule, value: Any) -> float:
    return rule.unset if value is None else rule.measure(value)


def _limit_text(value: Any) -> str:
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


def _judge_tenants(
    raw: Mapping[str, Any], full: Any, baseline: Any, applies: Callable[..., bool], path: Path,
    ignored: list[Ignored],
) -> dict[str, Any]:  # fmt: skip
    kept: dict[str, Any] = {}
    for tenant, limits in raw.items():
        if not isinstance(limits, Mapping):
            kept[tenant] = limits  # validation has refused it already
            continue
        mine = baseline.tenants.get(tenant)
        theirs = full.tenants.get(tenant)
        kept_limits: dict[str, Any] = {}
        for key, value in limits.items():
            name = key.lower()
            rule = TENANT_RULES.get(name, Rule(Kind.USER, "an unclassified tenant setting"))
            if theirs is None or not applies("tenants", tenant, name):
                kept_limits[key] = value
                continue
            new = getattr(theirs, name, None)
            old = getattr(mine, name, None) if mine is not None else None
            reason = None if new == old else _refusal(rule, new, old, set())
            if reason is None:
                kept_limits[key] = value
            else:
                ignored.append(Ignored(f"tenants.{tenant}.{name}", new, reason, path))
        kept[tenant] = kept_limits
    return kept


def _judge_depth_models(
    raw: Mapping[str, Any], full: Any, baseline: Any, applies: Callable[..., bool], providers: set[str],
    path: Path, ignored: list[Ignored],
) -> dict[str, Any]:  # fmt: skip
    kept: dict[str, Any] = {}
    rule = PROJECT_RULES["depth_models"]
    for depth, model in raw.items():
        if not applies("depth_models", str(depth)):
            kept[depth] = model
            continue
        key = int(depth) if str(depth).strip().isdigit() else depth
        new = full.depth_models.get(key, model)
        old = baseline.depth_models.get(key)
        reason = None if new == old else _refusal(rule, new, old, providers)
        if reason is None:
            kept[depth] = model
        else:
            ignored.append(Ignored(f"depth_models.{depth}", new, reason, path))
    return kept


# ---- reading a project file once (what is hashed is what is parsed)


@dataclass(frozen=True)
class ProjectFile:
    path: Path
    digest: str
    data: dict[str, Any]


def read_project_file(path: Path) -> ProjectFile:
    """Read, hash and parse ``path`` from one read, so the content judged is the content hashed."""
    import tomllib

    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PROJECT_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"project file {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_PROJECT_FILE_BYTES:
        raise ConfigError(
            f"project file {path} is larger than {MAX_PROJECT_FILE_BYTES >> 20} MB: not a settings file",
            hint="remove it or move it out of the project",
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"project file {path} is not valid TOML: {exc}") from None
    return ProjectFile(path, hashlib.sha256(raw).hexdigest(), data)


# ---- the user's record of trusted project files


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/rlm-sandbox`` (default ``~/.config/rlm-sandbox``): the user's own."""
    env = os.environ if environ is None else environ
    return Path(env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")) / "rlm-sandbox"


def trust_store(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / TRUST_FILE


@dataclass(frozen=True)
class Trust:
    """Whether a project file's settings apply as the user's own, and on what grounds."""

    path: Path
    digest: str
    by: Literal["flag", "record"] | None = None
    changed: bool = False  # the user trusted this file once, with another content

    @property
    def trusted(self) -> bool:
        return self.by is not None

    def describe(self) -> str:
        if self.by == "flag":
            return "trusted for this command (--trust-project)"
        if self.by == "record":
            return "trusted (rlm-sandbox config trust; content unchanged since)"
        if self.changed:
            return "untrusted: it changed since you trusted it (rlm-sandbox config trust to trust it again)"
        return "untrusted: it may only tighten your settings (rlm-sandbox config trust to trust it)"

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.digest, "trusted": self.trusted, "by": self.by,
                "changed_since_trusted": self.changed}  # fmt: skip


def _records(environ: Mapping[str, str] | None) -> dict[str, Any]:
    """The records; an unreadable store trusts nothing (the safe reading of a broken file)."""
    try:
        data = json.loads(trust_store(environ).read_text(encoding="utf-8"))
        projects = data.get("projects") if isinstance(data, dict) else None
        return dict(projects) if isinstance(projects, dict) else {}
    except (OSError, ValueError):
        return {}


def trust_of(project: ProjectFile, *, flag: bool, environ: Mapping[str, str] | None = None) -> Trust:
    record = _records(environ).get(str(project.path))
    recorded = record.get("sha256") if isinstance(record, dict) else None
    if flag:
        return Trust(project.path, project.digest, "flag")
    if recorded == project.digest:
        return Trust(project.path, project.digest, "record")
    return Trust(project.path, project.digest, None, changed=recorded is not None)


def record_trust(project: ProjectFile, environ: Mapping[str, str] | None = None) -> Path:
    records = _records(environ)
    records[str(project.path)] = {
        "sha256": project.digest,
        "trusted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return _write_records(records, environ)


def forget_trust(path: Path, environ: Mapping[str, str] | None = None) -> bool:
    records = _records(environ)
    if records.pop(str(path), None) is None:
        return False
    _write_records(records, environ)
    return True


def _write_records(records: dict[str, Any], environ: Mapping[str, str] | None) -> Path:
    """Atomically, readable by the user only (it decides what runs with their rights)."""
    target = trust_store(environ)
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".trusted-", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "projects": records}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, target)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {target}: {exc.strerror or exc}", hint="check the permissions of that directory"
        ) from None
    return target
