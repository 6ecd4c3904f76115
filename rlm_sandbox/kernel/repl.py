"""The REPL a cell sees: one namespace, the engine's functions, and what a cell asks the host.

Standard library only, and free of process concerns (file descriptors, signals, forks): the
kernel process (``kernel.py``) wraps it with output capture, a watchdog and the channel, and
the host's in-memory test backend (``rlm_sandbox.sandbox.fake``) runs the very same REPL over
an in-memory stream. So the semantics of ``FINAL``, ``FINAL_VAR``, ``llm_query`` (typed or
not), ``rlm_query`` and host tools are written once.

``cite(path, line, quote)`` only records: the citations of a cell travel to the host with
that cell's reply (bounded in number and size), and the host checks each one against the
original input on its own disk. Nothing the kernel says about a citation is trusted.

``HostLink`` is the kernel's half of ``llm_query``: every request gets its own odd id and a
waiter, so many threads of one cell can ask at once; the reader thread hands each reply to
its waiter, and a closed channel wakes every waiter with an error instead of a hang.
"""

from __future__ import annotations

import ast
import builtins
import codecs
import json
import os
import threading
import time
import traceback
import types
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

if __package__:  # imported by the host (the fake backend)
    from . import protocol as P
else:  # the container's script: the kernel's directory is sys.path[0]
    import protocol as P  # type: ignore[no-redef]

MAX_TOOL_JSON = 1 << 20
MAX_SCHEMA_JSON = 32768
_SIMPLE_SCHEMAS = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
}


class CellTimeoutError(BaseException):
    """Raised in the main thread when a cell's time is up.

    A BaseException, so a plain ``except Exception`` in a cell does not swallow it.
    """


class LLMQueryError(RuntimeError):
    """``llm_query`` could not be answered (no handler, a budget, a model error)."""


class ToolError(RuntimeError):
    """A host tool failed with an exception that has no counterpart in the sandbox."""


def _schema(output: object) -> dict | None:
    """``output=`` as a JSON Schema: a dict is one already; ``dict``/``list``/... are shorthands."""
    if output is None:
        return None
    if isinstance(output, type) and output in _SIMPLE_SCHEMAS:
        return {"type": _SIMPLE_SCHEMAS[output]}
    if isinstance(output, dict):
        if len(json.dumps(output)) > MAX_SCHEMA_JSON:
            raise ValueError("output schema is larger than 32 KB")
        return output
    raise TypeError("output= takes a JSON Schema dict, or one of dict, list, str, int, float, bool")


def _tool_exception(ename: str, message: str) -> BaseException:
    """The tool's own exception type when the sandbox has it (ValueError, KeyError, ...)."""
    cls = getattr(builtins, ename, None) if ename.isidentifier() else None
    text = message.split(": ", 1)[1] if message.startswith(ename + ": ") else message
    if ename == "KeyError" and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # str(KeyError) quotes its key; do not quote it twice
    if (
        isinstance(cls, type)
        and issubclass(cls, Exception)
        and not issubclass(cls, (SystemExit, KeyboardInterrupt))
    ):
        try:
            return cls(text)
        except Exception:
            pass
    return ToolError(message)


# --------------------------------------------------------------------------- requests to the host


class HostLink:
    """Requests from cells to the host, and the replies that answer them."""

    def __init__(
        self,
        send: Callable[..., None],
        *,
        wait_begin: Callable[[], None] = lambda: None,
        wait_end: Callable[[], None] = lambda: None,
    ) -> None:
        self.send = send  # send(header, *payloads): one frame
        self._wait_begin = wait_begin
        self._wait_end = wait_end
        self.pid = os.getpid()
        self.pending: dict[int, dict] = {}
        self.pending_lock = threading.Lock()
        self.next_id = 1  # odd ids: requests started by the kernel
        self.id_lock = threading.Lock()
        self.current_cell = 0
        self.closed = False
        # What the host reads of one frame; it sends its own limits with every cell.
        self.max_header = P.DEFAULT_MAX_HEADER
        self.max_payload = P.DEFAULT_MAX_PAYLOAD

    def _new_id(self) -> int:
        with self.id_lock:
            ident = self.next_id
            self.next_id += 2
            return ident

    def ask(
        self, prompts: list, kind: str = "llm", name: str | None = None, output: object = None
    ) -> list[str]:
        """One request for all ``prompts``; their answers, in order (raises what the host says)."""
        schema = _schema(output)
        encoded = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"llm_query prompts must be str, got {type(p).__name__} at index {i}")
            encoded.append(p.encode("utf-8", errors="surrogatepass"))
        if os.getpid() != self.pid:
            raise LLMQueryError("llm_query is not available in a process forked by the cell")
        if len(encoded) > P.MAX_BATCH:
            raise LLMQueryError(
                f"{kind}_query_batched takes at most {P.MAX_BATCH} prompts per call "
                f"(got {len(encoded)}); split the list"
            )
        total = sum(len(e) for e in encoded)
        if total > self.max_payload:
            raise LLMQueryError(
                f"the prompts add up to {total} bytes; the host takes at most {self.max_payload} "
                "per call; send less per call"
            )
        ident = self._new_id()
        request = {
            "t": P.LLM_REQUEST,
            "id": ident,
            "cell": self.current_cell,
            "sizes": [len(e) for e in encoded],
            **({"kind": kind} if kind != "llm" else {}),
            **({"name": name} if name is not None else {}),
            **({"output": schema} if schema is not None else {}),
        }
        head = len(P.encode_header(request, total)) - P.PREFIX_SIZE
        if head > self.max_header:
            raise LLMQueryError(
                f"this request's header would be {head} bytes; the host reads at most "
                f"{self.max_header} (the output= schema and one size per prompt make it up); "
                "send fewer prompts per call or a smaller schema"
            )
        waiter: dict = {"event": threading.Event(), "reply": None}
        with self.pending_lock:
            if self.closed:
                raise LLMQueryError("the host channel is closed")
            self.pending[ident] = waiter
        self._wait_begin()
        try:
            self.send(request, b"".join(encoded))
            while not waiter["event"].wait(0.5):
                pass
        finally:
            self._wait_end()
            with self.pending_lock:
                self.pending.pop(ident, None)
        header, payload = waiter["reply"]
        if header.get("status") != "ok":
            message = str(header.get("error") or f"{kind}_query failed")
            if kind == "tool":
                raise _tool_exception(str(header.get("ename") or ""), message)
            raise LLMQueryError(message)
        parts = P.split_sizes(payload, header.get("sizes") or [])
        if len(parts) != len(prompts):
            raise LLMQueryError(f"host answered {len(parts)} of {len(prompts)} prompts")
        return [p.decode("utf-8", errors="replace") for p in parts]

    def deliver(self, header: dict, payload: bytes) -> None:
        """A reply arrived (called by the reader): wake the cell thread waiting for it."""
        with self.pending_lock:
            waiter = self.pending.get(header["id"])
        if waiter is not None:
            waiter["reply"] = (header, payload)
            waiter["event"].set()

    def close(self) -> None:
        """The channel is gone: every waiter gets an error now, none waits forever."""
        with self.pending_lock:
            self.closed = True
            for waiter in self.pending.values():
                waiter["reply"] = ({"status": "error", "error": "the host channel closed"}, b"")
                waiter["event"].set()


# --------------------------------------------------------------------------- the namespace


@dataclass
class CellOutcome:
    status: str  # ok | error | timeout
    ename: str | None
    evalue: str | None
    traceback: str | None
    duration_s: float
    final: str | None


class Repl:
    """One namespace for the container's life, and the functions the engine puts in it."""

    def __init__(
        self,
        link: HostLink,
        *,
        echo: Callable[[str], None] = print,
        compile_guard: AbstractContextManager[object] | None = None,
    ) -> None:
        self.link = link
        self.echo = echo  # where a cell's last expression is printed (the kernel: stdout)
        # Held while a cell is parsed and compiled. A kernel is alone in its process and needs
        # none; the host's in-memory backend runs many REPLs as threads of one process, and
        # CPython 3.11's AST conversion keeps its recursion depth per interpreter, so two
        # threads parsing at once can fail with "AST constructor recursion depth mismatch".
        self.compile_guard = compile_guard if compile_guard is not None else nullcontext()
        self.final: str | None = None
        self.citations: list[list[object]] = []  # cited since the last reply, sent with it
        self._cite_lock = threading.Lock()
        self.engine: dict[str, object] = {
            "context": None,
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
            "rlm_query": self.rlm_query,
            "rlm_query_batched": self.rlm_query_batched,
            "_rlm_register_tools": self.register_tools,
            "FINAL": self.FINAL,
            "FINAL_VAR": self.FINAL_VAR,
            "SHOW_VARS": self.SHOW_VARS,
            "cite": self.cite,
        }
        self.ns: dict[str, object] = {"__name__": "__main__", "__builtins__": builtins}
        self.ns.update(self.engine)
        self.ns["LLMQueryError"] = LLMQueryError
        self.ns["CellTimeoutError"] = CellTimeoutError
        self.ns["ToolError"] = ToolError

    # ---- what cells call

    def llm_query(self, prompt: str, model: str | None = None, output: object = None) -> object:
        """Ask the host's model (or a child RLM) one question; returns its answer (parsed
        JSON, checked against the schema, when ``output=`` is given)."""
        answer = self.link.ask([prompt], output=output)[0]
        return json.loads(answer) if output is not None else answer

    def llm_query_batched(self, prompts: list[str], model: str | None = None, output: object = None) -> list:
        """Ask many questions in one round trip; the host answers them concurrently."""
        prompts = list(prompts)
        answers = self.link.ask(prompts, output=output) if prompts else []
        return [json.loads(a) for a in answers] if output is not None else answers

    def rlm_query(self, prompt: str, output: object = None) -> object:
        """Always a child RLM (its own REPL) while depth remains; else a plain model call."""
        answer = self.link.ask([prompt], kind="rlm", output=output)[0]
        return json.loads(answer) if output is not None else answer

    def rlm_query_batched(self, prompts: list[str], output: object = None) -> list:
        prompts = list(prompts)
        answers = self.link.ask(prompts, kind="rlm", output=output) if prompts else []
        return [json.loads(a) for a in answers] if output is not None else answers

    def _tool(self, name: str, args: tuple, kwargs: dict) -> object:
        try:
            blob = json.dumps({"args": list(args), "kwargs": kwargs})
        except (TypeError, ValueError) as exc:
            raise TypeError(f"arguments of tool {name} must be JSON values: {exc}") from None
        if len(blob) > MAX_TOOL_JSON:
            raise ValueError(f"arguments of tool {name} are larger than {MAX_TOOL_JSON} bytes")
        return json.loads(self.link.ask([blob], kind="tool", name=name)[0])

    def register_tools(self, names: list) -> None:
        """Called by the host: one proxy per host tool, restored after every cell like the
        other engine names (a cell cannot lose them by rebinding)."""
        for name in names:
            if not (isinstance(name, str) and name.isidentifier() and len(name) <= 64):
                raise ValueError(f"bad tool name {name!r}")

            def proxy(*args: object, _name: str = name, **kwargs: object) -> object:
                return self._tool(_name, args, kwargs)

            proxy.__name__ = proxy.__qualname__ = name
            self.engine[name] = proxy
            self.ns[name] = proxy

    def FINAL(self, value: object) -> None:
        """Mark ``value`` as the final answer of this RLM node."""
        if isinstance(value, dict | list):
            try:  # structured answers travel as JSON (typed answers are checked on the host)
                self.final = json.dumps(value, ensure_ascii=False)
                return
            except (TypeError, ValueError):
                pass
        self.final = value if isinstance(value, str) else str(value)

    def FINAL_VAR(self, name: object) -> None:
        """Mark the variable called ``name`` as the final answer."""
        if isinstance(name, str):
            key = name.strip().strip("'\"")
            if key in self.ns:
                self.FINAL(self.ns[key])
                return
            if key.isidentifier():
                raise NameError(
                    f"FINAL_VAR: no variable named {key!r}; assign it first, pass its name in quotes "
                    f'(FINAL_VAR("{key}")), or use FINAL(value)'
                )
        self.FINAL(name)

    def cite(self, path: str | None, line: int, quote: str) -> None:
        """Back the answer with evidence: line ``line`` (1-based) of input file ``path`` (a key
        of ``context``; None when ``context`` is one text) contains ``quote``. The host checks
        it against the original input and shows it with the answer, verified or refused."""
        if path is not None and not isinstance(path, str):
            raise TypeError(f"cite: path must be a str (a key of context) or None, not {type(path).__name__}")
        if isinstance(line, bool) or not isinstance(line, int):
            raise TypeError(f"cite: line must be an int (1 is the first line), not {type(line).__name__}")
        if line < 1:
            raise ValueError(f"cite: line numbers start at 1, got {line}")
        if not isinstance(quote, str):
            raise TypeError(f"cite: quote must be a str (text of that line), not {type(quote).__name__}")
        if path is not None and len(path) > P.MAX_CITE_PATH:
            raise ValueError(f"cite: path is longer than {P.MAX_CITE_PATH} characters")
        if len(quote) > P.MAX_CITE_QUOTE:
            raise ValueError(f"cite: quote is longer than {P.MAX_CITE_QUOTE} characters; quote less")
        with self._cite_lock:
            if len(self.citations) >= P.MAX_CITATIONS:
                raise ValueError(f"cite: at most {P.MAX_CITATIONS} citations per cell")
            self.citations.append([path, min(line, 1 << 40), quote])

    def take_citations(self) -> list[list[object]]:
        """What was cited since the last reply (the kernel sends it with this one)."""
        with self._cite_lock:
            taken, self.citations = self.citations, []
        return taken

    def SHOW_VARS(self) -> dict[str, str]:
        """List the variables a cell has created (name -> type), and print them."""
        hidden = set(self.engine) | {
            "__name__",
            "__builtins__",
            "LLMQueryError",
            "CellTimeoutError",
            "ToolError",
        }
        found = {
            k: type(v).__name__
            for k, v in self.ns.items()
            if k not in hidden and not k.startswith("_") and not isinstance(v, types.ModuleType)
        }
        self.echo("variables: " + (", ".join(f"{k}: {t}" for k, t in found.items()) or "(none)"))
        return found

    # ---- what the kernel calls

    def set_context(self, kind: str, raw: bytes | bytearray | memoryview | list) -> tuple[str, int]:
        """Make ``context`` from the bytes the host sent; its type name and ``len()``.

        ``files``: ``raw`` is a list of ``(name, [chunks])``, decoded one file at a time (each
        file's bytes are freed as its text is made) into a dict in the order they came."""
        if kind == "files":
            files: dict[str, str] = {}
            parts = list(raw) if isinstance(raw, list) else []
            parts.reverse()
            while parts:
                name, chunks = parts.pop()
                data = b"".join(chunks)
                chunks.clear()
                files[name] = codecs.decode(data, "utf-8", "replace")
                del data
            value: object = files
        elif kind == "str":
            value = codecs.decode(raw, "utf-8", "replace")
        elif kind == "bytes":
            value = bytes(raw)
        else:
            value = json.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
        self.engine["context"] = value
        self.ns["context"] = value
        return type(value).__name__, len(value) if hasattr(value, "__len__") else -1

    def restore_engine_names(self) -> None:
        """Put back what a cell rebound or deleted (``context``, ``llm_query``, the tools)."""
        for name, value in self.engine.items():
            if self.ns.get(name) is not value:
                self.ns[name] = value
        if self.ns.get("__builtins__") is not builtins:
            self.ns["__builtins__"] = builtins

    def run(
        self,
        code: str,
        cell_id: int,
        *,
        limit_s: float | None = None,
        guard: Callable[[], AbstractContextManager[object]] | None = None,
        on_escape: Callable[[BaseException | None], None] | None = None,
    ) -> CellOutcome:
        """Run one cell; its last expression is echoed, like a notebook's. ``guard()`` is a
        context manager around the cell's own code (the kernel arms its watchdog there);
        ``on_escape`` is called when code ran on in another process (a fork) and must not
        reply as the kernel would."""
        self.link.current_cell = cell_id
        self.final = None
        status, ename, evalue, tb = "ok", None, None, None
        pid = os.getpid()
        t0 = time.perf_counter()
        try:
            with self.compile_guard:
                tree = ast.parse(code, "<cell>", "exec")
                tail = None
                if tree.body and isinstance(tree.body[-1], ast.Expr):
                    tail = ast.Expression(tree.body.pop().value)
                body = compile(tree, "<cell>", "exec")
                tail_code = compile(tail, "<cell>", "eval") if tail is not None else None
            with guard() if guard is not None else nullcontext():
                try:
                    exec(body, self.ns)
                    if tail_code is not None:
                        value = eval(tail_code, self.ns)
                        if value is not None:
                            self.echo(repr(value))
                except BaseException as exc:
                    if os.getpid() != pid and on_escape is not None:
                        on_escape(exc)
                    raise
                if os.getpid() != pid and on_escape is not None:
                    on_escape(None)
        except CellTimeoutError:
            status, ename = "timeout", "CellTimeoutError"
            limit = f" of {limit_s:g} s" if limit_s is not None else ""
            evalue = f"cell exceeded its time limit{limit} and was interrupted; variables are kept"
            tb = evalue
        except BaseException as exc:  # a cell's SystemExit or KeyboardInterrupt must not end the kernel
            status, ename, evalue = "error", type(exc).__name__, str(exc)
            tb = format_tb(exc)
        self.restore_engine_names()
        return CellOutcome(status, ename, evalue, tb, time.perf_counter() - t0, self.final)


def format_tb(exc: BaseException) -> str:
    """The cell's own frames only: the model needs its code's traceback, not the engine's."""
    try:
        frames = traceback.extract_tb(exc.__traceback__)
        frames = [
            f for f in frames if f.filename == "<cell>" or not f.filename.endswith(("kernel.py", "repl.py"))
        ]
        lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
        return "Traceback (most recent call last):\n" + "".join(lines)
    except Exception:
        return f"{type(exc).__name__}: {exc}"
