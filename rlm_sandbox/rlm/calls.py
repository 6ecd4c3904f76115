"""Every model call of a run goes through here: admitted by the budget, bounded by the run's
wall clock, counted per model, traced with its whole response and a digest of its request.

One place, so that the rules a call obeys (budgets, timeouts, what is recorded for replay)
cannot differ between a node's step, a leaf ``llm_query``, a compaction or a fallback.

With a response cache (``--lm-cache``, :mod:`rlm_sandbox.rlm.lm_cache`) every call is
looked up first: a hit is answered from disk before the budget or the client is touched (it
costs nothing and counts as no model call), traced as ``lm_cache_hit``; a miss is stored
once its answer arrives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rlm_sandbox.errors import LMError
from rlm_sandbox.rlm.budget import Budget
from rlm_sandbox.rlm.digest import request_digest
from rlm_sandbox.rlm.lm_cache import LMCache
from rlm_sandbox.rlm.models import ModelRouter
from rlm_sandbox.trace.writer import Tracer

Messages = list[dict[str, str]]
#: Bytes of a response kept whole in the trace: enough for `replay` to answer the same request.
RESPONSE_IN_TRACE = 65536


class ModelCalls:
    def __init__(
        self,
        models: ModelRouter,
        budget: Budget,
        tracer: Tracer,
        *,
        lm_timeout: float,
        on_fatal: Callable[[BaseException], None],
        cache: LMCache | None = None,
    ) -> None:
        self.models = models
        self.cache = cache
        self.cache_hits = 0
        self._hits_lock = threading.Lock()
        self.budget = budget
        self.tracer = tracer
        self.lm_timeout = lm_timeout
        self._on_fatal = on_fatal
        self.first_call_s: float | None = None

    def call(self, client: Any, messages: Messages, node: str, depth: int, purpose: str) -> str:
        """A call the budget admits, with a timeout no longer than the run's wall time left."""
        cached = self._from_cache(client, messages, node, depth, purpose)
        if cached is not None:
            return cached
        self.budget.reserve_lm_call()
        timeout = self.lm_timeout
        left = self.budget.wall_left()
        if left is not None:
            timeout = max(1.0, min(timeout, left))
        return self.call_unchecked(client, messages, node, depth, purpose, timeout)

    def call_unchecked(
        self,
        client: Any,
        messages: Messages,
        node: str,
        depth: int,
        purpose: str,
        timeout: float,
        *,
        fatal: bool = True,
    ) -> str:
        """One model call, counted (per model too) and traced, whatever budget allowed it.

        A failure stops the whole run (``fatal``), except for a call made after the run has
        already stopped (the fallback): its failure must not replace the stop that came first."""
        cached = self._from_cache(client, messages, node, depth, purpose)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        self.tracer.emit("lm_start", node=node, depth=depth, purpose=purpose, model=client.model)
        self.models.started()
        try:
            resp = client.completion(messages, timeout_s=timeout)
        except BaseException as exc:
            self.models.finished(None)
            if isinstance(exc, LMError):
                left = self.budget.wall_left()
                if exc.kind == "timeout" and left is not None and left <= 0.5:
                    # The call was cut by the run's wall budget, not by the model: say so.
                    self.tracer.emit("lm_cut", node=node, depth=depth, model=client.model, reason="timeout")
                    self.budget.check()
                self.tracer.emit("lm_error", node=node, depth=depth, model=client.model, error=str(exc))
                if fatal:
                    self._on_fatal(exc)
            raise
        self.models.finished(client.model, resp.prompt_tokens, resp.completion_tokens, resp.cost_usd)
        self.budget.record_usage(resp.prompt_tokens, resp.completion_tokens, resp.cost_usd)
        if self.first_call_s is None:
            self.first_call_s = time.monotonic() - self.budget.started
        self.tracer.emit(
            "lm_call",
            node=node,
            depth=depth,
            purpose=purpose,
            model=client.model,  # the name the user configured: per-model accounting uses it
            served_model=resp.model or None,
            prompt_tokens=resp.prompt_tokens,
            completion_tokens=resp.completion_tokens,
            cost_usd=resp.cost_usd,
            latency_s=round(time.perf_counter() - t0, 4),
            # Whole (up to 64 KB) and keyed by the request, so `replay` can answer the same
            # request with the same text without a model.
            response=resp.text[:RESPONSE_IN_TRACE],
            request_sha256=request_digest(messages),
        )
        if self.cache is not None:
            self.cache.put(
                client.model,
                request_digest(messages),
                resp.text,
                resp.prompt_tokens,
                resp.completion_tokens,
                resp.model or None,
            )
        return resp.text

    def _from_cache(self, client: Any, messages: Messages, node: str, depth: int, purpose: str) -> str | None:
        """The cached answer to this request, traced as a hit; None when there is none."""
        if self.cache is None:
            return None
        digest = request_digest(messages)
        hit = self.cache.get(client.model, digest)
        if hit is None:
            return None
        with self._hits_lock:
            self.cache_hits += 1
        self.tracer.emit(
            "lm_cache_hit",
            node=node,
            depth=depth,
            purpose=purpose,
            model=client.model,
            response=hit.text[:RESPONSE_IN_TRACE],
            request_sha256=digest,
        )
        return hit.text
