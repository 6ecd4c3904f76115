"""Host-side Python functions offered to the code in the sandbox, like ``llm_query``.

A tool RUNS ON THE HOST, with the host's rights (files, network, keys): only offer functions
you would let the model call directly. What we guarantee is the boundary: arguments and
results are JSON, size-bounded and checked; every call is traced and counted against the
run's budgets; an exception in a tool comes back into the cell as a Python exception (the
same built-in type where there is one, ``ToolError`` otherwise), never as a crash.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from typing import Any

from rlm_sandbox.blocking import blocking_call
from rlm_sandbox.errors import ConfigError
from rlm_sandbox.untrusted_json import loads

MAX_JSON = 1 << 20
MAX_DOC = 600


class ToolSet:
    def __init__(self, tools: dict[str, Callable[..., Any]] | None) -> None:
        self.tools: dict[str, Callable[..., Any]] = {}
        for name, fn in (tools or {}).items():
            if not (isinstance(name, str) and name.isidentifier() and len(name) <= 64) or name.startswith(
                "_"
            ):
                raise ConfigError(f"tool name {name!r} is not a public Python identifier")
            if name in RESERVED:
                raise ConfigError(f"tool name {name!r} would hide the REPL's own {name}")
            if not callable(fn):
                raise ConfigError(f"tool {name!r} is not callable")
            self.tools[name] = fn

    def __bool__(self) -> bool:
        return bool(self.tools)

    def names(self) -> list[str]:
        return sorted(self.tools)

    def describe(self) -> str:
        """The tools as the system prompt lists them: signature and docstring."""
        lines = []
        for name in self.names():
            fn = self.tools[name]
            try:
                sig = str(inspect.signature(fn, eval_str=True))  # real types, not 'str' strings
            except Exception:
                try:
                    sig = str(inspect.signature(fn))
                except (TypeError, ValueError):
                    sig = "(...)"
            doc = " ".join((inspect.getdoc(fn) or "").split())[:MAX_DOC]
            lines.append(f"  - `{name}{sig}`" + (f": {doc}" if doc else ""))
        return "\n".join(lines)

    async def acall(
        self,
        name: str,
        blob: str,
        *,
        reserve: Callable[[], None],
        trace: Callable[[dict[str, Any]], None],
    ) -> str:
        """Run one tool call from a cell; returns the JSON result, raises what the tool raised.
        An ``async`` tool is awaited on the run's loop; a plain one runs in a thread of
        :func:`~rlm_sandbox.blocking.blocking_call` (it may block: the loop must not).

        ``reserve`` takes the call from the run's budget (and raises when it is spent);
        ``trace`` records the call, whatever its outcome."""
        fn = self.tools.get(name)
        if fn is None:
            raise NameError(f"no tool named {name!r} (tools: {', '.join(self.names()) or 'none'})")
        if len(blob) > MAX_JSON:
            raise ValueError(f"tool arguments are larger than {MAX_JSON} bytes")
        try:
            request = loads(blob, max_chars=MAX_JSON)  # bounded: digits, depth, size
            args, kwargs = list(request["args"]), dict(request["kwargs"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"tool arguments are not valid JSON: {exc}") from None
        reserve()
        t0 = time.perf_counter()
        error = None
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(*args, **kwargs)
            else:
                result = await blocking_call(fn, *args, **kwargs)
            out = json.dumps(result, ensure_ascii=False)
            if len(out) > MAX_JSON:
                raise ValueError(f"tool {name} returned more than {MAX_JSON} bytes of JSON")
            return out
        except (TypeError, ValueError) as exc:
            if isinstance(exc, TypeError) and "JSON serializable" in str(exc):
                exc = TypeError(f"tool {name} returned a value that is not JSON: {exc}")
            error = f"{type(exc).__name__}: {exc}"
            raise exc from None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            trace(
                {
                    "tool": name,
                    "args": blob[:500],
                    "error": error,
                    "duration_s": round(time.perf_counter() - t0, 6),
                }
            )


RESERVED = frozenset(
    {
        "context",
        "llm_query",
        "llm_query_batched",
        "rlm_query",
        "rlm_query_batched",
        "FINAL",
        "FINAL_VAR",
        "SHOW_VARS",
    }
)


def load_tools(spec: str, *, directory: str | None = None) -> dict[str, Callable[..., Any]]:
    """``module:attr`` (the CLI's ``--tools``): a dict of callables, a list of functions, or one.

    With ``directory`` (the CLI passes the current one), the named module is looked for
    there first, and only that module: the directory is never put on ``sys.path``, so
    neither the tools module's own imports nor anything the process imports later can be
    shadowed by a file that happens to lie there (a ``rich.py`` in a cloned repository).
    A package there keeps its submodules; anything else comes from the environment.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--tools {spec!r} is not module:attr", hint="e.g. --tools mytools:TOOLS")
    try:
        module = _import_from(module_name, directory)
        obj = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load tools from {spec!r}: {exc}") from None
    if isinstance(obj, dict):
        return dict(obj)
    if callable(obj):
        return {obj.__name__: obj}
    if isinstance(obj, list | tuple):
        return {fn.__name__: fn for fn in obj}
    raise ConfigError(f"{spec!r} is not a dict of callables, a list of functions or a function")


def _import_from(name: str, directory: str | None) -> Any:
    """Import ``name``, its top-level module from ``directory`` if it is there (and not
    imported already), without changing ``sys.path``."""
    import importlib.machinery
    import importlib.util
    import sys

    top = name.partition(".")[0]
    if directory is not None and top not in sys.modules:
        found = importlib.machinery.PathFinder.find_spec(top, [directory])
        if found is not None and found.loader is not None:
            module = importlib.util.module_from_spec(found)
            sys.modules[top] = module
            try:
                found.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(top, None)
                raise
    return importlib.import_module(name)
