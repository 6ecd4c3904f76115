"""Which model answers at which level of the tree, and what each model cost.

The root node uses ``model``, plain leaf calls use ``sub_model``, and ``depth_models`` names
a model for any level: a node at depth d thinks with ``depth_models[d]`` when set; a plain
``llm_query`` from depth d is a call at level d + 1 and uses ``depth_models[d + 1]`` when set.
Usage is kept per model, and calls still in flight when a run stops are waited for (a
bounded while), so the tree's cost is exact rather than whatever had returned by then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ModelUsage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class ModelRouter:
    def __init__(
        self,
        root: Any,
        sub: Any,
        depth_models: dict[int, str] | None = None,
        make_client: Callable[[str], Any] | None = None,
        owned: list[Any] | None = None,
    ) -> None:
        self.root = root
        self.sub = sub
        # The clients this run made (not the ones a caller gave): closed when it ends, so a
        # process that runs thousands of runs keeps no connection of a finished one.
        self.owned: list[Any] = list(owned or [])
        self._clients: dict[str, Any] = {root.model: root, sub.model: sub}
        self._by_depth: dict[int, Any] = {}
        for depth, model in sorted((depth_models or {}).items()):
            if model not in self._clients:
                if make_client is None:
                    raise ValueError("depth_models needs a way to make clients")
                self._clients[model] = make_client(model)
                self.owned.append(self._clients[model])
            self._by_depth[int(depth)] = self._clients[model]
        self._lock = threading.Condition()
        self.usage: dict[str, ModelUsage] = {}
        self.in_flight = 0

    async def aclose(self) -> None:
        """Close the connections of the clients this run made (their ``aclose`` or ``close``)."""
        for client in {id(c): c for c in self.owned}.values():
            aclose, close = getattr(client, "aclose", None), getattr(client, "close", None)
            try:
                if aclose is not None:
                    await aclose()
                elif close is not None:
                    close()
            except Exception:
                pass  # a connection that will not close cleanly is dropped all the same

    def clients(self) -> list[Any]:
        """Every client of the run, once each."""
        return list({id(c): c for c in self._clients.values()}.values())

    def check_credentials(self) -> None:
        """Refuse, before any container starts, a model whose key is certainly missing (the
        error names the variable to set); the clients that cannot know say nothing here."""
        for client in self.clients():
            check = getattr(client, "check_credentials", None)
            if callable(check):
                check()

    def for_node(self, depth: int) -> Any:
        """The model an RLM node at ``depth`` writes its code with."""
        return self._by_depth.get(depth) or (self.root if depth == 0 else self.sub)

    def for_leaf(self, caller_depth: int) -> Any:
        """The model a plain ``llm_query`` from a node at ``caller_depth`` goes to."""
        return self._by_depth.get(caller_depth + 1) or self.sub

    def levels(self, max_depth: int) -> dict[int, str]:
        """Which model each level uses (nodes at 0..max_depth-1, leaf calls at max_depth)."""
        out = {d: self.for_node(d).model for d in range(max_depth)}
        out[max_depth] = self.for_leaf(max_depth - 1).model
        return out

    # ---- accounting

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, model: str | None, prompt: int = 0, completion: int = 0, cost: float = 0.0) -> None:
        with self._lock:
            self.in_flight -= 1
            if model is not None:
                u = self.usage.setdefault(model, ModelUsage())
                u.calls += 1
                u.prompt_tokens += prompt
                u.completion_tokens += completion
                u.cost_usd += cost
            self._lock.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait for calls still in flight (their cost belongs to this run); False if some
        did not come back in time."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self.in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def report(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {m: asdict(u) | {"cost_usd": round(u.cost_usd, 6)} for m, u in self.usage.items()}
