"""What the service is told: where it listens, its tenants, and what every run starts from.

The tenants and their tokens come from the operator's own settings only (flags, the
environment, the user's file or ``--config FILE``): a project file found in the working
directory never decides who may use a service, trusted or not
(:meth:`rlm_sandbox.settings.LoadedSettings.operator_settings`). The settings every run
starts from are those of ``run``, with the project file's tightening applied, but without a
trace file (the service keeps each run's trace itself) and without the model-response
cache (shared between tenants it would tell one tenant what another asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.tenants import TenantLimits

if TYPE_CHECKING:
    from rlm_sandbox.settings import LoadedSettings

#: A tenant's runs at once, and runs waiting, when its table does not say.
DEFAULT_MAX_RUNS = 4
DEFAULT_MAX_QUEUED = 32


@dataclass(frozen=True)
class Tenant:
    """A tenant as the service sees it: its name, its limits and the digest of its token."""

    name: str
    limits: TenantLimits  # what its runs get (token_sha256 removed: runs do not need it)
    digest: bytes = field(repr=False)
    max_runs: int = DEFAULT_MAX_RUNS
    max_queued: int = DEFAULT_MAX_QUEUED
    max_input_bytes: int = 8 << 30  # the lower of the tenant's and the service's cap


@dataclass
class ServeConfig:
    """Everything ``rlm-sandbox serve`` needs to start (built by :func:`serve_config`)."""

    model: str
    sub_model: str | None
    base: RLMConfig  # what every run starts from; a run gets its tenant's name and limits
    tenants: dict[str, Tenant]
    host: str = "127.0.0.1"
    port: int = 8080
    grace_s: float = 30.0
    spool_dir: Path | None = None  # uploads go under it (None: a private directory in TMPDIR)
    notes: list[str] = field(default_factory=list)  # said once at start (settings left out)

    def run_config(self, tenant: Tenant, **tighter: object) -> RLMConfig:
        """The settings of one run of ``tenant``; ``tighter`` are a request's own limits,
        already checked to be no looser than :attr:`base` (:mod:`rlm_sandbox.serve.limits`)."""
        values = self.base.model_dump() | dict(tighter)
        values |= {"tenant": tenant.name, "tenants": {tenant.name: tenant.limits.model_dump()}}
        return RLMConfig.model_validate(values)


def serve_config(
    loaded: LoadedSettings, *, host: str, port: int, grace_s: float | None = None
) -> ServeConfig:
    """The service's configuration from resolved settings; a :class:`ConfigError` when it
    could not serve anyone (no model, no tenant with a token, two tenants with one token)."""
    settings = loaded.settings
    if not settings.model:
        raise ConfigError(
            "serve needs a model: the root model every run uses",
            hint="pass --model provider/model, or set model in your rlm-sandbox.toml or RLM_SANDBOX_MODEL",
        )
    operator = loaded.operator_settings()
    notes = []
    if settings.lm_cache:
        notes.append(
            "lm_cache is not used by serve: a cache shared by tenants would tell one what another asked"
        )
    if settings.trace:
        notes.append("trace is not used by serve: each run's trace is at GET /v1/runs/ID/trace")
    tenants = _tenants(operator.tenants, settings.max_input_bytes)
    base = settings.rlm_config(trace=None, lm_cache=None, tenant="default", tenants={})
    return ServeConfig(
        model=settings.model,
        sub_model=settings.sub_model,
        base=base,
        tenants=tenants,
        host=host,
        port=port,
        grace_s=settings.serve_grace_s if grace_s is None else grace_s,
        notes=notes,
    )


def _tenants(tables: dict[str, TenantLimits], max_input_bytes: int) -> dict[str, Tenant]:
    out: dict[str, Tenant] = {}
    seen: dict[str, str] = {}
    for name, limits in sorted(tables.items()):
        if limits.token_sha256 is None:
            continue  # limits for `run --tenant NAME`, not a client of the service
        if limits.token_sha256 in seen:
            raise ConfigError(
                f"tenants {seen[limits.token_sha256]!r} and {name!r} have the same token_sha256",
                hint="give every tenant a token of its own",
            )
        seen[limits.token_sha256] = name
        cap = min(max_input_bytes, limits.max_input_bytes or max_input_bytes)
        out[name] = Tenant(
            name=name,
            limits=limits.model_copy(update={"token_sha256": None}),
            digest=bytes.fromhex(limits.token_sha256),
            max_runs=limits.max_runs or DEFAULT_MAX_RUNS,
            max_queued=DEFAULT_MAX_QUEUED if limits.max_queued is None else limits.max_queued,
            max_input_bytes=cap,
        )
    if not out:
        raise ConfigError(
            "no tenant can use the service: none of your settings' [tenants.NAME] tables has a token_sha256",
            hint='make a token and its digest: TOKEN=rlm-$(openssl rand -hex 32); printf %s "$TOKEN" | sha256sum; '
            'then [tenants.NAME] token_sha256 = "<digest>" in your own rlm-sandbox.toml or --config FILE '
            "(never a project file)",
        )
    return out
