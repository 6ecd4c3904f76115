"""Command-line flags for settings, declared once for ``run``, ``demo``, ``config show``, ``doctor``.

A click default would hide the environment and the config files (click cannot tell a
default from a value the user typed once it reaches the callback), so every setting flag
defaults to ``None`` and :func:`resolve_settings` passes on only the flags that
``ctx.get_parameter_source`` says were really given. The built-in default is shown in
``--help`` all the same, read lazily so that ``--help`` does not import pydantic-settings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from rlm_sandbox.cli.output import fail
from rlm_sandbox.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from rlm_sandbox.settings import LoadedSettings

_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)


@dataclass(frozen=True)
class SettingFlag:
    name: str  # the field of rlm_sandbox.settings.Settings
    decls: tuple[str, ...]
    help: str
    type: Any = None
    param: str | None = None  # the callback's keyword, when it is not the field's name
    multiple: bool = False


FLAGS: dict[str, SettingFlag] = {
    f.name: f
    for f in (
        SettingFlag("model", ("--model",), "root model, LiteLLM format (provider/model)"),
        SettingFlag("sub_model", ("--sub-model",), "model for sub-calls (default: the root model)"),
        SettingFlag("max_steps", ("--max-steps",), "steps per node", click.INT),
        SettingFlag(
            "depth", ("--depth", "--max-depth"), "levels of RLM nodes (1 = the paper's setting)", click.INT
        ),
        SettingFlag("max_lm_calls", ("--max-lm-calls",), "model calls, whole run", click.INT),
        SettingFlag("max_tokens", ("--max-tokens",), "tokens (prompt + completion), whole run", click.INT),
        SettingFlag("max_cost", ("--max-cost",), "USD, whole run", click.FLOAT),
        SettingFlag("timeout", ("--timeout",), "wall-time budget, seconds", click.FLOAT),
        SettingFlag(
            "lm_timeout", ("--lm-timeout",), "seconds one model call may take, retries included", click.FLOAT
        ),
        SettingFlag("lm_retries", ("--lm-retries",), "attempts per model call (1 = no retry)", click.INT),
        SettingFlag(
            "lm_max_tokens",
            ("--lm-max-tokens",),
            "completion tokens per model call (sent as max_tokens; reserved against the budgets)",
            click.INT,
        ),
        SettingFlag(
            "schema_retries",
            ("--schema-retries",),
            "times an answer that does not match --schema is sent back to the model to fix",
            click.INT,
        ),
        SettingFlag("max_containers", ("--max-containers",), "containers alive at once", click.INT),
        SettingFlag("max_concurrency", ("--max-concurrency",), "sub-calls in flight per node", click.INT),
        SettingFlag(
            "pool_size",
            ("--pool-size",),
            "warm containers kept for child nodes (default: 0 at depth 1, else 4)",
            click.INT,
        ),
        SettingFlag("cell_timeout", ("--cell-timeout",), "seconds per cell", click.FLOAT),
        SettingFlag("memory", ("--memory",), "memory limit per container"),
        SettingFlag("cpus", ("--cpus",), "CPUs per container", click.FLOAT),
        SettingFlag("runtime", ("--runtime",), "container runtime, e.g. runsc (gVisor)"),
        SettingFlag(
            "docker_url", ("--docker-url",), "Docker engine URL (default: DOCKER_HOST or the socket)"
        ),
        SettingFlag(
            "image_packages",
            ("--image-packages",),
            "Debian packages to add to the sandbox image, e.g. python3-pandas (comma-separated or "
            "repeated; built once into a derived image, cached by the list)",
            param="image_packages",
            multiple=True,
        ),
        SettingFlag(
            "recursion",
            ("--recursion",),
            "auto: llm_query starts child RLMs while depth remains; explicit: only rlm_query does",
            click.Choice(["auto", "explicit"]),
        ),
        SettingFlag(
            "depth_models",
            ("--depth-model",),
            "model for one level, D=MODEL (repeatable): nodes at depth D, leaf calls from depth D-1",
            param="depth_models",
            multiple=True,
        ),
        SettingFlag(
            "engines",
            ("--engine",),
            "a Docker engine to place nodes on (repeat for several; URL or URL,max=N)",
            param="engines",
            multiple=True,
        ),
        SettingFlag("tenant", ("--tenant",), "tenant label for containers, trace and [tenants.NAME] limits"),
        SettingFlag("api_base", ("--api-base",), "OpenAI-compatible server URL"),
        SettingFlag(
            "max_input_bytes",
            ("--max-input-bytes",),
            "cap on the whole input once decompressed (bytes, or 8g, 512m): a gzip bomb stops here",
        ),
        SettingFlag(
            "lm_cache",
            ("--lm-cache",),
            "directory of a model-response cache: the same request is answered from it, at no cost",
            click.Path(file_okay=False),
        ),
        SettingFlag(
            "lm_cache_max_bytes",
            ("--lm-cache-max-bytes",),
            "bound of the model-response cache (bytes, or 1g, 200m); the entries used longest ago go first",
        ),
        SettingFlag(
            "trace",
            ("--trace",),
            "write the trace (JSON lines) to this file",
            click.Path(dir_okay=False),
            param="trace_path",
        ),
    )
}
MODEL_FLAGS = ("model", "sub_model")
RUN_FLAGS = tuple(n for n in FLAGS if n not in MODEL_FLAGS)
PARAM_TO_FIELD = {f.param or f.name: f.name for f in FLAGS.values()}


class SettingOption(click.Option):
    """A flag whose help shows the built-in default without making it click's default."""

    def __init__(self, *args: Any, setting: str, command_default: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setting = setting
        self.command_default = command_default  # this command's own default, when it has one

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        from rlm_sandbox.settings import Settings

        if self.command_default is not None:
            return record[0], f"{record[1]}  [default: {self.command_default}]".strip()
        info = Settings.model_fields[self.setting]
        default = info.default
        if default is None or isinstance(default, dict) or info.default_factory is not None:
            return record
        return record[0], f"{record[1]}  [default: {default}]".strip()


def setting_options(
    *names: str, help: dict[str, str] | None = None, defaults: dict[str, Any] | None = None
) -> Callable[[Callable], Callable]:
    """Declare the flags of ``names`` (in this order), each defaulting to ``None``.
    ``defaults`` are a command's own defaults where they differ from the settings' (shown
    in ``--help``; :func:`budget_options` applies them)."""

    def decorate(f: Callable) -> Callable:
        for name in reversed(names):
            flag = FLAGS[name]
            decls = (*flag.decls, flag.param) if flag.param else flag.decls
            f = click.option(
                *decls,
                cls=SettingOption,
                setting=name,
                command_default=(defaults or {}).get(name),
                type=flag.type,
                default=None,
                multiple=flag.multiple,
                help=(help or {}).get(name, flag.help),
            )(f)
        return f

    return decorate


def trust_option(f: Callable) -> Callable:
    """``--trust-project``: this command reads the project's rlm-sandbox.toml as the user's own.
    Not a setting: a file or a variable that could turn it on would defeat it."""
    return click.option(
        "--trust-project",
        "trust_project",
        is_flag=True,
        help="apply the project's rlm-sandbox.toml as if you wrote it (by default it may only "
        "tighten your settings; `rlm-sandbox config trust` remembers the choice)",
    )(f)


def resolve_settings(
    ctx: click.Context, kwargs: dict[str, Any], *, announce: bool = True, config_file: Path | None = None
) -> LoadedSettings:
    """Load the settings with the flags really given, and put every effective value back
    into ``kwargs`` under its parameter name (so command bodies read one dict).

    Every value of an untrusted project file that was not applied is said once on stderr
    (``announce``; ``config show`` lists them in its own output instead). ``config_file``
    (``--config FILE``) is read in place of the user's file."""
    from rlm_sandbox.settings import load_settings

    given: dict[str, Any] = {}
    names: dict[str, str] = {}
    params = [p for p in ctx.command.params if p.name in PARAM_TO_FIELD and p.name in kwargs]
    for param in params:
        assert param.name is not None
        if ctx.get_parameter_source(param.name) in _GIVEN:
            field = PARAM_TO_FIELD[param.name]
            given[field] = list(kwargs[param.name]) if FLAGS[field].multiple else kwargs[param.name]
            names[field] = _typed_flag(param)
    loaded = load_settings(
        given,
        flag_names=names,
        trust_project=bool(kwargs.pop("trust_project", False)),
        config_file=config_file,
    )
    for param in params:
        assert param.name is not None
        kwargs[param.name] = getattr(loaded.settings, PARAM_TO_FIELD[param.name])
    if announce:
        announce_ignored(loaded)
    return loaded


def announce_ignored(loaded: LoadedSettings) -> None:
    """One line per value of the project file that was left out, and how to apply them."""
    from rlm_sandbox.project_trust import IGNORED_HINT
    from rlm_sandbox.safe_text import visible

    for item in loaded.ignored:
        click.echo(f"note: {visible(item.line())}", err=True)
    if loaded.ignored:
        click.echo(f"hint: {IGNORED_HINT}", err=True)


def _typed_flag(param: click.Parameter) -> str:
    """The spelling of the flag as the user most likely typed it (the long form)."""
    longs = [o for o in param.opts if o.startswith("--")]
    return (longs or param.opts)[0]


def budget_options(f: Callable | None = None, *, defaults: dict[str, Any] | None = None) -> Any:
    """The setting flags of a run plus its output flags. Settings are resolved before the
    command body runs (flag > env > project file > user file > default), so the body sees
    effective values under the usual keys and ``o["settings"]`` says where each came from.

    ``defaults``: the command's own built-in defaults (``demo`` runs at depth 2), used where
    no flag, variable or file set the value, and shown as the default in ``--help``: one
    declaration, so the help and the behaviour cannot disagree."""
    if f is None:
        return functools.partial(budget_options, defaults=defaults)
    own = dict(defaults or {})

    @functools.wraps(f)
    def with_settings(**o: Any) -> Any:
        try:
            o["settings"] = resolve_settings(click.get_current_context(), o)
        except ConfigError as exc:
            fail(exc, o.get("debug", False))
        for name, value in own.items():
            if o["settings"].origin(name) == "default":
                o[FLAGS[name].param or name] = value
        return f(**o)

    opts = [
        setting_options(*RUN_FLAGS, defaults=own),
        trust_option,
        click.option(
            "--backend",
            type=click.Choice(["docker", "local"]),
            default="docker",
            show_default=True,
            help="'local' runs the code as a plain subprocess with NO SANDBOX (trusted code only; "
            "refused with --tenant). Deliberately not a setting: only a flag can turn it on.",
        ),
        click.option("-v", "--verbose", is_flag=True, help="show the trace as it happens"),
        click.option(
            "--json", "as_json", is_flag=True, help="print one JSON object on stdout and nothing else"
        ),
        click.option("--debug", is_flag=True, help="show tracebacks"),
    ]
    decorated: Callable = with_settings
    for opt in reversed(opts):
        decorated = opt(decorated)
    return decorated
