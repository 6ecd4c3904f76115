"""Settings of ``run``/``demo`` from flags, the environment and ``rlm-sandbox.toml`` files.

Precedence, highest first: a command-line flag, an ``RLM_SANDBOX_*`` environment variable,
the project file (``rlm-sandbox.toml`` in the current directory, or in a parent up to the
project's root), the user file (``$XDG_CONFIG_HOME/rlm-sandbox/rlm-sandbox.toml``), the
built-in default. pydantic-settings does the reading and merging; this module adds what it
does not: finding the files, remembering where every value came from so that
``rlm-sandbox config show`` can say it and an invalid value is reported with its source, and
holding a project file the user has not trusted to what it may decide (it may only tighten
the user's own settings: :mod:`rlm_sandbox.project_trust`).

Bounds and defaults are taken from :class:`RLMConfig` and :class:`SandboxConfig` field by
field, so a limit is defined once. API keys are not settings: the model clients read them from the
environment, and nothing here ever holds or prints one.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.project_trust import Ignored, Trust, config_dir, judge, read_project_file, trust_of
from rlm_sandbox.rlm.config import ByteSize, RLMConfig
from rlm_sandbox.rlm.tenants import TenantLimits
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.packages import check_package_names, split_package_list

FILE_NAME = "rlm-sandbox.toml"
ENV_PREFIX = "RLM_SANDBOX_"
_PROJECT_MARKERS = (".git", "pyproject.toml")
SANDBOX_FIELDS = (
    "cell_timeout",
    "memory",
    "runtime",
    "tenant",
    "cpus",
    "docker_url",
    "image_packages",
    "max_held_bytes",
    "held_stall_timeout",
    "input_file",
)
RLM_FIELDS = (
    "max_steps",
    "depth",
    "max_lm_calls",
    "max_tokens",
    "max_cost",
    "timeout",
    "lm_timeout",
    "lm_retries",
    "lm_max_tokens",
    "max_containers",
    "max_concurrency",
    "max_run_held_bytes",
    "pool_size",
    "api_base",
    "tenant",
    "tenants",
    "trace",
    "depth_models",
    "recursion",
    "schema_retries",
    "max_input_bytes",
    "lm_cache",
    "lm_cache_max_bytes",
)


def _same_as(model: type, name: str) -> FieldInfo:
    """The field of ``model`` (default, bounds, description), so a limit lives in one place."""
    return copy.copy(model.model_fields[name])


class Settings(BaseSettings):
    """Everything ``run``/``demo`` can be told, whatever the source."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", env_ignore_empty=True, validate_default=False
    )

    model: str | None = Field(None, description="root model, LiteLLM format (provider/model)")
    sub_model: str | None = Field(None, description="model for sub-calls (default: model)")
    api_base: str | None = Field(None, description="OpenAI-compatible server URL")
    max_steps: int = _same_as(RLMConfig, "max_steps")
    depth: int = _same_as(RLMConfig, "depth")
    max_lm_calls: int | None = _same_as(RLMConfig, "max_lm_calls")
    max_tokens: int | None = _same_as(RLMConfig, "max_tokens")
    max_cost: float | None = _same_as(RLMConfig, "max_cost")
    timeout: float | None = _same_as(RLMConfig, "timeout")
    lm_timeout: float = _same_as(RLMConfig, "lm_timeout")
    lm_retries: int = _same_as(RLMConfig, "lm_retries")
    lm_max_tokens: int = _same_as(RLMConfig, "lm_max_tokens")
    max_containers: int = _same_as(RLMConfig, "max_containers")
    max_concurrency: int = _same_as(RLMConfig, "max_concurrency")
    pool_size: int | None = _same_as(RLMConfig, "pool_size")
    cell_timeout: float = _same_as(SandboxConfig, "cell_timeout")
    memory: str = _same_as(SandboxConfig, "memory")
    cpus: float = _same_as(SandboxConfig, "cpus")
    runtime: str | None = _same_as(SandboxConfig, "runtime")
    docker_url: str | None = _same_as(SandboxConfig, "docker_url")
    # NoDecode: a variable holds names ("a b" or "a,b"), which the validator below splits.
    image_packages: Annotated[list[str], NoDecode] = _same_as(SandboxConfig, "image_packages")
    max_held_bytes: int = _same_as(SandboxConfig, "max_held_bytes")
    max_run_held_bytes: int | None = _same_as(RLMConfig, "max_run_held_bytes")
    held_stall_timeout: float = _same_as(SandboxConfig, "held_stall_timeout")
    input_file: bool = _same_as(SandboxConfig, "input_file")
    recursion: Literal["auto", "explicit"] = _same_as(RLMConfig, "recursion")
    schema_retries: int = _same_as(RLMConfig, "schema_retries")
    depth_models: dict[int, str] = Field(
        default_factory=dict,
        description="model per level: D=MODEL (nodes at depth D; leaf calls from depth D-1)",
    )
    engines: list[str] = Field(
        default_factory=list,
        description="Docker engines to spread nodes over, each URL or URL,max=N (empty: docker_url)",
    )
    tenant: str = _same_as(SandboxConfig, "tenant")
    tenants: dict[str, TenantLimits] = _same_as(RLMConfig, "tenants")
    trace: str | None = _same_as(RLMConfig, "trace")
    max_input_bytes: ByteSize = _same_as(RLMConfig, "max_input_bytes")
    lm_cache: str | None = _same_as(RLMConfig, "lm_cache")
    lm_cache_max_bytes: ByteSize = _same_as(RLMConfig, "lm_cache_max_bytes")
    serve_grace_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="rlm-sandbox serve: seconds running runs may take to finish after SIGTERM; "
        "then they are cancelled",
    )

    @field_validator("depth_models", mode="before")
    @classmethod
    def _depth_models_from_flags(cls, value: Any) -> Any:
        """``--depth-model 1=openai/gpt-4o-mini`` (repeatable) or a TOML table/JSON object."""
        if isinstance(value, list | tuple):
            out: dict[str, str] = {}
            for item in value:
                depth, sep, model = str(item).partition("=")
                if not sep or not depth.strip().isdigit() or not model.strip():
                    raise ValueError(f"{item!r} is not DEPTH=MODEL, e.g. 1=openai/gpt-4o-mini")
                out[depth.strip()] = model.strip()
            return out
        return value

    @field_validator("image_packages", mode="before")
    @classmethod
    def _image_packages(cls, value: Any) -> Any:
        """``--image-packages a,b`` (repeatable), ``RLM_SANDBOX_IMAGE_PACKAGES="a b"`` or a
        TOML list; names checked here so that a bad one is reported with its source."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("not a JSON list of names; or give them as 'a b' or 'a,b'") from None
        try:
            return list(check_package_names(split_package_list(value)))
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env and no secrets directory: a file nobody asked for must not change a run.
        layers = _LAYERS.get()
        if layers is None:  # Settings() used directly: the same sources, the same project rule
            layers = load_settings().layers[1:]
        return (init_settings, *(layer.source for layer in layers if layer.source is not None))

    def rlm_config(self, **overrides: Any) -> RLMConfig:
        """The run's configuration; ``overrides`` are values a command sets for itself."""
        return build_rlm_config(self.model_dump() | overrides)


def build_rlm_config(values: Mapping[str, Any]) -> RLMConfig:
    from rlm_sandbox.sandbox.engines import EngineSpec

    sandbox = SandboxConfig(**{k: values[k] for k in SANDBOX_FIELDS})
    engines = [EngineSpec.parse(e) for e in values.get("engines") or ()]
    return RLMConfig(**{k: values[k] for k in RLM_FIELDS}, sandbox=sandbox, engines=engines)


# ---- where the files are


def user_config_file(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / FILE_NAME


def project_config_file(cwd: Path | None = None) -> Path | None:
    """``rlm-sandbox.toml`` in ``cwd`` or a parent up to the project's root (``.git`` or
    ``pyproject.toml``); outside a project only ``cwd`` counts, so a stray file in ``/tmp``
    or ``$HOME`` never configures an unrelated directory."""
    here = (cwd or Path.cwd()).resolve()
    chain = [here, *here.parents]
    root = next((d for d in chain if any((d / m).exists() for m in _PROJECT_MARKERS)), None)
    for d in chain[: chain.index(root) + 1] if root else [here]:
        if (d / FILE_NAME).is_file():
            return d / FILE_NAME
    return None


def config_files(
    cwd: Path | None = None, environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> list[tuple[str, Path]]:
    """The files that exist, highest precedence first, as ``(kind, path)``. ``config_file``
    (``--config FILE``) is read as the user's file, in place of the default one."""
    found: list[tuple[str, Path]] = []
    project = project_config_file(cwd)
    user = config_file if config_file is not None else user_config_file(environ)
    if project is not None and not (user.is_file() and user.resolve() == project.resolve()):
        found.append(("project", project))  # run inside ~/.config/rlm-sandbox: it is the user's file
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"--config {config_file}: no such file", hint="give the path of a TOML file")
        found.append(("config", config_file))
    elif user.is_file():
        found.append(("user", user))
    return found


# ---- loading, with the origin of every value


@dataclass(frozen=True)
class Layer:
    """One source of values: what it holds (raw, before validation) and how to name it."""

    kind: str  # flag | env | project | user
    data: Mapping[str, Any]
    path: Path | None = None
    flag_names: Mapping[str, str] = field(default_factory=dict)
    source: PydanticBaseSettingsSource | None = None

    def label(self, key: str) -> str:
        if self.kind == "flag":
            return f"flag {self.flag_names.get(key, '--' + key.replace('_', '-'))}"
        if self.kind == "env":
            return f"env {ENV_PREFIX}{key.upper()}"
        return f"{self.kind} file {self.path}"


_LAYERS: ContextVar[Sequence[Layer] | None] = ContextVar("rlm_sandbox_settings_layers", default=None)


@dataclass
class LoadedSettings:
    settings: Settings
    layers: list[Layer]
    files: list[tuple[str, Path]]
    trust: Trust | None = None  # the project file's standing, when there is one
    ignored: list[Ignored] = field(default_factory=list)  # its values that were not applied

    def origin(self, *path: str) -> str:
        """Where the value at ``path`` (e.g. ``"depth"`` or ``"tenants", "a", "max_cost"``)
        came from: the first source, in precedence order, that holds it."""
        for layer in self.layers:
            if _has_path(layer.data, path):
                return layer.label(path[0])
        return "default"

    def rows(self) -> list[tuple[str, Any, str]]:
        """``(name, effective value, origin)`` for every setting, tenants one limit a row."""
        out: list[tuple[str, Any, str]] = []
        for name in Settings.model_fields:
            if name == "tenants":
                continue
            out.append((name, display_value(name, getattr(self.settings, name)), self.origin(name)))
        for tenant, limits in sorted(self.settings.tenants.items()):
            for key, value in limits.model_dump().items():
                out.append((f"tenants.{tenant}.{key}", value, self.origin("tenants", tenant, key)))
        return out

    def operator_settings(self) -> Settings:
        """The settings without the project file: the operator's own (flags, environment,
        the user's file or ``--config``). ``rlm-sandbox serve`` takes its tenants and their
        tokens from these only: a file found in the working directory, trusted or not, never
        decides who may use a service."""
        layers = [layer for layer in self.layers if layer.kind != "project"]
        if len(layers) == len(self.layers):
            return self.settings
        return _build(layers, self.files)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    trust_project: bool = False,
    config_file: Path | None = None,
) -> LoadedSettings:
    """Resolve every setting; ``flags`` holds only the flags really given on the command line.

    A project file the user does not trust (``trust_project`` is the ``--trust-project``
    flag; a record made by ``rlm-sandbox config trust`` counts too) only tightens: what it may
    not set is left out and listed in ``ignored``. Raises :class:`ConfigError` with one line
    naming the setting and its source.
    """
    files = config_files(cwd, environ, config_file)
    layers = [Layer("flag", dict(flags or {}), flag_names=dict(flag_names or {}))]
    env_source = EnvSettingsSource(Settings)
    if environ is not None:
        env_source.env_vars = {k.lower(): v for k, v in environ.items()}
    try:
        layers.append(Layer("env", env_source(), source=env_source))
    except SettingsError as exc:  # a table-valued variable that is not JSON
        name = m.group(1) if (m := re.search(r'field "(\w+)"', str(exc))) else "?"
        raise ConfigError(
            f"invalid setting {name} (env {ENV_PREFIX}{name.upper()}): not valid JSON",
            hint=f"""e.g. {ENV_PREFIX}TENANTS='{{"team-a": {{"max_cost": 5}}}}', or use rlm-sandbox.toml""",
        ) from None
    project = None
    for kind, path in files:
        if kind == "project":
            project = read_project_file(path)  # hashed and parsed from the same bytes
            layers.append(_data_layer(kind, path, project.data))
            continue
        try:
            toml_source = TomlConfigSettingsSource(Settings, path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{kind} file {path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{kind} file {path} cannot be read: {exc.strerror or exc}") from None
        layers.append(Layer(kind, toml_source.toml_data, path=path, source=toml_source))
    settings = _build(layers, files)  # an invalid value anywhere is an error naming its source
    if project is None:
        return LoadedSettings(settings, layers, files)
    trust = trust_of(project, flag=trust_project, environ=environ)
    if trust.trusted:
        return LoadedSettings(settings, layers, files, trust)
    at = next(i for i, layer in enumerate(layers) if layer.kind == "project")
    above = layers[:at]
    baseline = _build(layers[:at] + layers[at + 1 :], files)  # the user's own settings alone
    kept, ignored = judge(
        project.data,
        settings,
        baseline,
        lambda *p: not any(_shadows(layer.data, p) for layer in above),
        project.path,
        display_value,
    )
    if ignored:
        layers[at] = _data_layer("project", project.path, kept)
        settings = _build(layers, files)
    return LoadedSettings(settings, layers, files, trust, ignored)


def _data_layer(kind: str, path: Path, data: dict[str, Any]) -> Layer:
    return Layer(kind, data, path=path, source=InitSettingsSource(Settings, dict(data)))


def _build(layers: list[Layer], files: list[tuple[str, Path]]) -> Settings:
    """Settings from ``layers`` (the first holds the flags), checked as a run would check them."""
    token = _LAYERS.set(layers[1:])
    try:
        settings = Settings(**layers[0].data)
        settings.rlm_config()  # cross-model checks (sizes, tenant names) fail here, not mid-run
    except ValidationError as exc:
        loaded = LoadedSettings(Settings.model_construct(), layers, files)
        raise describe_error(exc, loaded.origin) from None
    finally:
        _LAYERS.reset(token)
    return settings


def _shadows(data: Any, path: Sequence[str]) -> bool:
    """Whether a higher layer's ``data`` decides the value at ``path`` (a scalar or a list
    given for a table replaces the whole table)."""
    for i, key in enumerate(path):
        if not isinstance(data, Mapping):
            return i > 0
        lowered = {str(k).lower(): v for k, v in data.items()}
        if key.lower() not in lowered:
            return False
        data = lowered[key.lower()]
    return True


def describe_error(exc: ValidationError, origin: Any) -> ConfigError:
    """One line: which setting, from where, what is wrong (and a hint for a misspelt name)."""
    first = exc.errors()[0]
    loc = tuple(str(p) for p in first["loc"] if p != "sandbox") or ("?",)
    name = ".".join(loc)
    where = origin(*loc)
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1].replace("-", "_"), _known_names(loc), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "run `rlm-sandbox config show` for the names"
        return ConfigError(f"unknown setting {name!r} in {where}{more}", hint=hint)
    shown = _short(display_value(loc[0], first.get("input")))
    if loc[-1] == "token_sha256":
        shown = "(not shown: it may be the token itself)"
    msg = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"invalid setting {name} = {shown} ({where}): {msg}{more}")


def _known_names(loc: tuple[str, ...]) -> list[str]:
    if loc[0] == "tenants":
        return list(TenantLimits.model_fields)
    return list(Settings.model_fields)


def _has_path(data: Any, path: Sequence[str]) -> bool:
    for key in path:
        if not isinstance(data, Mapping):
            return False
        lowered = {str(k).lower(): v for k, v in data.items()}
        if key.lower() not in lowered:
            return False
        data = lowered[key.lower()]
    return True


def display_value(name: str, value: Any) -> Any:
    """A value as it may be shown: URLs lose any password they carry."""
    if name in ("api_base", "docker_url") and isinstance(value, str):
        return redact_url(value)
    return value


_USERINFO = re.compile(r"(//[^/?#@:]*):[^/?#@]*@")


def redact_url(url: str) -> str:
    """``url`` without the password it may carry. A URL ``urlsplit`` cannot take (a stray
    ``]``, a port that is not a number: a hostile project file's, or a typo) is masked by
    pattern instead: showing a setting must never fail, nor show its password."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return _USERINFO.sub(r"\1:***@", url)
    return urlunsplit(parts._replace(netloc=netloc))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
