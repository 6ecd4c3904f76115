"""The ``rlm-sandbox`` command. Heavy imports (docker, LiteLLM) happen inside commands only,
so ``--help``, ``gc`` and ``doctor`` start fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from rlm_sandbox.cli_config import config as config_command
from rlm_sandbox.cli_doctor import doctor as doctor_command
from rlm_sandbox.cli_run import budget_options, execute, fail
from rlm_sandbox.cli_settings import MODEL_FLAGS, setting_options
from rlm_sandbox.cli_trace import trace_group
from rlm_sandbox.errors import RLMSandboxError


class FriendlyGroup(click.Group):
    """Whatever goes wrong reaches a person as one line and a hint, never a traceback,
    unless they asked for one (``--debug`` anywhere on the line, or RLM_SANDBOX_DEBUG=1)."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:] or os.environ.get("RLM_SANDBOX_DEBUG", "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except RLMSandboxError as exc:
            fail(exc, debug)
        except Exception as exc:
            if debug:
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
            click.echo("hint: rerun with --debug for the traceback, and please report it", err=True)
            sys.exit(1)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rlm-sandbox")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Recursive Language Models whose code runs in hardened Docker containers."""
    if ctx.invoked_subcommand in ("run", "demo") and not any(a in ("-h", "--help") for a in sys.argv):
        # LiteLLM's import takes seconds: start it now, so it overlaps option parsing,
        # container start and input load instead of adding to them. The engine's own modules
        # are imported first (a third of a second), or they would queue behind LiteLLM's.
        import rlm_sandbox.rlm
        import rlm_sandbox.sandbox.core  # noqa: F401
        from rlm_sandbox.lm import start_preload

        start_preload()


@main.group()
def image() -> None:
    """Build or inspect the sandbox image."""


@image.command("build")
@click.option("--base", default=None, help="base image (default: the offline Debian base)")
@click.option("--force", is_flag=True, help="rebuild even if the image exists")
def image_build(base: str | None, force: bool) -> None:
    """Build the sandbox image (and the offline base) if missing; print its tag."""
    from rich.console import Console

    from rlm_sandbox.config import SandboxConfig
    from rlm_sandbox.errors import RLMSandboxError
    from rlm_sandbox.sandbox.docker_backend import docker_client
    from rlm_sandbox.sandbox.image import ensure_image

    err = Console(stderr=True)
    cfg = SandboxConfig(base_image=base) if base else SandboxConfig()
    try:
        with err.status("checking the sandbox image") as status:
            tag = ensure_image(
                docker_client(cfg.docker_url), cfg, progress=lambda m: status.update(m[:100]), force=force
            )
    except RLMSandboxError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(4)
    click.echo(tag)


@main.command()
@click.option("--dry-run", is_flag=True, help="list what would be removed, remove nothing")
@click.option("--tenant", default=None, help="only this tenant's containers")
@click.option("--run", "run_id", default=None, help="only this run's containers")
@click.option("--all", "include_live", is_flag=True, help="also containers of controllers still running")
@click.option(
    "--engine", "engines", multiple=True, help="clean this engine (repeatable; default: the configured ones)"
)
def gc(
    dry_run: bool, tenant: str | None, run_id: str | None, include_live: bool, engines: tuple[str, ...]
) -> None:
    """Remove sandbox containers left behind by controllers that died.

    Every engine named by --engine is cleaned (default: the engines of the settings, else
    the local one); one that does not answer is reported and the others are still cleaned.
    """
    from rlm_sandbox.errors import RLMSandboxError
    from rlm_sandbox.sandbox.engines import EngineSpec, register
    from rlm_sandbox.sandbox.gc import collect_garbage

    urls: list[str | None] = list(engines)
    if not urls:
        from rlm_sandbox.settings import Settings

        urls = list(Settings().engines) or [None]
    verb = "would remove" if dry_run else "removed"
    failed = 0
    for text in urls:
        backend = None
        where = ""
        try:
            if text is not None:
                from rlm_sandbox.sandbox.docker_backend import DockerBackend

                spec = EngineSpec.parse(text)
                register(spec)
                backend, where = DockerBackend(spec.url), f" on {spec.url}"
            report = collect_garbage(
                backend, tenant=tenant, run_id=run_id, include_live=include_live, dry_run=dry_run
            )
        except RLMSandboxError as exc:
            click.echo(f"error{where}: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            failed += 1
            continue
        for info in report.removed:
            labels = info.labels
            click.echo(
                f"{verb} {info.id[:12]} ({info.status}){where} run={labels.get('rlm-sandbox.run', '?')} "
                f"tenant={labels.get('rlm-sandbox.tenant', '?')}"
            )
        click.echo(
            f"{verb} {len(report.removed)} container(s){where}; kept {len(report.kept)} of live controllers"
        )
    if failed:
        sys.exit(4)


@main.command()
@setting_options(*MODEL_FLAGS)
@click.option("--task", required=True, help="what to find or compute over the input")
@click.option("-i", "--input", "input_path", default=None, help="input file ('-' or absent: standard input)")
@click.option(
    "--tools",
    "tools_spec",
    default=None,
    help="module:attr of host functions the code may call (they run on THIS machine, with your rights)",
)
@click.option(
    "--schema",
    "schema_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON Schema file the answer must match (it is checked and sent back to fix)",
)
@budget_options
def run(
    model: str | None,
    sub_model: str | None,
    task: str,
    input_path: str | None,
    tools_spec: str | None,
    schema_path: str | None,
    **o: Any,
) -> None:
    """Answer TASK over a large input with a Recursive Language Model.

    Every option except --task, --input and the output flags can also come from
    RLM_SANDBOX_* variables or rlm-sandbox.toml (see `rlm-sandbox config show`).
    """
    from rlm_sandbox.inputs import open_input

    if not model:
        raise click.UsageError(
            "Missing option '--model' (or set model in rlm-sandbox.toml, or RLM_SANDBOX_MODEL)."
        )
    try:
        tools, output = None, None
        if tools_spec:
            from rlm_sandbox.tools import load_tools

            # --tools mymodule:TOOLS from the current project: that module only, the
            # directory never goes on sys.path (it would shadow every later import).
            tools = load_tools(tools_spec, directory=os.getcwd())
        if schema_path:
            import json

            from rlm_sandbox.errors import ConfigError

            try:
                output = json.loads(Path(schema_path).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ConfigError(f"{schema_path} is not JSON: {exc}") from None
        context = open_input(input_path)
        code = execute(model, sub_model, task, context, o, tools=tools, output=output)
    except RLMSandboxError as exc:
        fail(exc, o["debug"])
    sys.exit(code)


@main.command()
@setting_options(*MODEL_FLAGS, help={"model": "use this model instead of the built-in scripted one"})
@click.option("--size", default="4m", show_default=True, help="size of the generated log (e.g. 4m, 100m)")
@click.option(
    "--task", "task_kind", type=click.Choice(["count", "search"]), default="count", show_default=True
)
@click.option("--latency", type=float, default=0.0, help="simulated latency of the scripted model, seconds")
@budget_options
def demo(
    model: str | None, sub_model: str | None, size: str, task_kind: str, latency: float, **o: Any
) -> None:
    """A real RLM run (real containers, real LiteLLM HTTP path) on a built-in generated log.

    With no --model it serves a scripted model on 127.0.0.1, so no key is needed.
    """
    import tempfile
    from pathlib import Path

    from rlm_sandbox.scripted_model import ScriptedModelServer, generate_log

    if o["settings"].origin("depth") == "default":
        o["depth"] = 2
    if not o["trace_path"]:
        o["trace_path"] = str(Path(tempfile.gettempdir()) / "rlm-sandbox-demo-trace.jsonl")
    err_echo = lambda m: click.echo(m, err=True)  # noqa: E731
    path = Path(tempfile.gettempdir()) / f"rlm-sandbox-demo-{size}.log"
    stats = generate_log(path, _parse_size(size), seed=7)
    task = 'How many lines contain "ERROR disk"?' if task_kind == "count" else "What is the secret code?"
    truth = str(stats.disk_errors) if task_kind == "count" else (stats.needle or "").split()[-1]
    err_echo(f"demo: {stats.size_bytes / 1e6:.1f} MB log, {stats.lines} lines at {path}")
    err_echo(f"demo: task: {task}  (the true answer is {truth})")
    try:
        if model:
            code = execute(model, sub_model, task, path, o)
        else:
            with ScriptedModelServer(latency_s=latency) as server:
                o["api_base"] = server.url
                err_echo(f"demo: no --model given: a scripted model is served at {server.url}")
                code = execute(server.model_name, None, task, path, o, api_key="sk-scripted-local")
    except RLMSandboxError as exc:
        fail(exc, o["debug"])
    sys.exit(code)


@main.command()
@setting_options(*MODEL_FLAGS)
@click.option("-i", "--input", "input_path", required=True, help="the input file the questions are about")
@budget_options
def chat(model: str | None, sub_model: str | None, input_path: str, **o: Any) -> None:
    """Ask questions about one input, one per line; the REPL carries over between them.

    Commands: /cost (what the session has used), /trace (where the trace is), /quit.
    """
    import json
    import tempfile

    from rich.console import Console

    from rlm_sandbox.cli_run import build_config, use_live_view
    from rlm_sandbox.inputs import open_input
    from rlm_sandbox.rlm import RLM

    if not model:
        raise click.UsageError(
            "Missing option '--model' (or set model in rlm-sandbox.toml, or RLM_SANDBOX_MODEL)."
        )
    err = Console(stderr=True)
    if not o["trace_path"]:
        o["trace_path"] = str(Path(tempfile.gettempdir()) / f"rlm-sandbox-chat-{os.getpid()}.jsonl")
    config = build_config(o)
    rlm = RLM(model=model, sub_model=sub_model, config=config)
    live = None
    if use_live_view(err) and not o["as_json"]:
        from rlm_sandbox.live import LiveTree

        live = LiveTree(err, verbose=o["verbose"])
        rlm.listeners.append(live.on_event)
    interactive = sys.stdin.isatty()
    try:
        with rlm.session(context=open_input(input_path)) as session:
            while True:
                if interactive:
                    err.print("[bold]?[/] ", end="")
                line = sys.stdin.readline()
                if not line or line.strip() == "/quit":
                    break
                question = line.strip()
                if not question:
                    continue
                if question == "/cost":
                    t = session.totals()
                    toks = t["tokens"]["prompt"] + t["tokens"]["completion"]
                    click.echo(
                        f"{t['questions']} questions, {t['lm_calls']} LM calls, {toks} tokens, "
                        f"${t['cost_usd']:.4f}, {t['nodes']} nodes"
                    )
                    continue
                if question == "/trace":
                    click.echo(config.trace)
                    continue
                if live is not None:
                    with live:
                        result = session.ask(question)
                else:
                    result = session.ask(question)
                if o["as_json"]:
                    click.echo(json.dumps(result.to_json(), ensure_ascii=False))
                elif result.ok or result.fallback:
                    click.echo(result.answer)
                if not result.ok:
                    err.print(f"[red]{result.status}[/]: {result.error}")
                    if result.hint:
                        err.print(f"hint: {result.hint}")
    except RLMSandboxError as exc:
        fail(exc, o["debug"])
    err.print(f"[dim]session ended; trace: {config.trace}[/]")


def _parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    mult = units.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if t[-1:] in units else t) * mult)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size like 4m or 1g") from None


main.add_command(config_command)
main.add_command(doctor_command)
main.add_command(trace_group)
from rlm_sandbox.cli_replay import replay as replay_command  # noqa: E402

main.add_command(replay_command)


if __name__ == "__main__":
    main()
