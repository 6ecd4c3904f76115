"""Budgets as hard caps, without Docker: the prompt bound against real tokenizers, reservations
under concurrency, the fallback's hold, tenants, and model calls abandoned at their deadline
(the real LiteLLM client against the scripted server on loopback)."""

from __future__ import annotations

import importlib.util
import os
import random
import threading
import time
from pathlib import Path

import pytest

from rlm_sandbox.errors import BudgetExhausted, LMError
from rlm_sandbox.rlm.bridge import run_sync
from rlm_sandbox.rlm.budget import Budget
from rlm_sandbox.rlm.limits import Limits
from rlm_sandbox.rlm.tenants import TenantAccount, TenantLimits
from rlm_sandbox.rlm.worst_case import TOKENS_PER_MESSAGE, TOKENS_PER_REQUEST, Worst, prompt_token_bound
from rlm_sandbox.testing import ScriptedModelServer, generate_log, never_answers, trickles


def _tokenizer_dir() -> Path:
    """LiteLLM ships tiktoken's o200k/cl100k files and Claude's and DeepSeek's tokenizers."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"


def _tokenizers() -> dict[str, object]:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_tokenizer_dir()))  # offline: LiteLLM's copies
    import tiktoken
    from tokenizers import Tokenizer

    out: dict[str, object] = {
        name: (lambda e: lambda text: len(e.encode(text, disallowed_special=())))(tiktoken.get_encoding(name))
        for name in ("o200k_base", "cl100k_base")
    }
    for name in ("anthropic", "deepseek"):
        tok = Tokenizer.from_file(str(_tokenizer_dir() / f"{name}_tokenizer.json"))
        out[name] = (lambda t: lambda text: len(t.encode(text).ids))(tok)
    return out


def _texts(tmp_path: Path) -> dict[str, str]:
    rnd = random.Random(7)
    log = generate_log(tmp_path / "t.log", 200_000, seed=2).path.read_text()
    return {
        "log": log,
        "prose": Path(__file__).resolve().parents[2].joinpath("README.md").read_text(),
        "control chars": "".join(chr(rnd.randrange(0, 32)) for _ in range(5000)),
        "random latin-1": "".join(chr(rnd.randrange(0, 256)) for _ in range(5000)),
        "emoji": "".join(chr(rnd.randrange(0x1F300, 0x1FAFF)) for _ in range(3000)),
        "cjk": "".join(chr(rnd.randrange(0x4E00, 0x9FFF)) for _ in range(3000)),
        "spaced letters": " ".join(rnd.choice("abcdefghij") for _ in range(5000)),
        "digits": "".join(rnd.choice("0123456789") for _ in range(5000)),
        "one char": "x",
        "empty": "",
    }


def test_prompt_bound_holds_for_real_tokenizers(tmp_path: Path) -> None:
    """The reserved prompt never counts fewer tokens than GPT-4o's, GPT-4's, Claude's or
    DeepSeek's tokenizer does (chat-template tokens included), even for hostile text; and
    what it costs in pessimism on ordinary text is bounded (about 2-4.5x)."""
    counters = _tokenizers()
    ratios: dict[str, float] = {}
    for name, text in _texts(tmp_path).items():
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]
        bound = prompt_token_bound(messages)
        for tok_name, count in counters.items():
            # ChatML-style templates: a few special tokens and the role around every message,
            # plus the reply's priming (OpenAI documents 3 + 3; others are of the same order).
            real = sum(count(m["content"]) + count(m["role"]) + 5 for m in messages) + 5  # type: ignore[operator]
            assert bound >= real, (name, tok_name, bound, real)
            if name in ("log", "prose") and tok_name == "o200k_base":
                ratios[name] = bound / real
    assert 1.5 < ratios["log"] < 3 and 2.5 < ratios["prose"] < 5, ratios
    assert prompt_token_bound([]) == TOKENS_PER_REQUEST
    assert (
        prompt_token_bound([{"role": "user", "content": "é"}])
        == TOKENS_PER_REQUEST + TOKENS_PER_MESSAGE + 4 + 2
    )


def test_the_prompt_bound_covers_the_scripted_servers_count() -> None:
    """The scripted server counts ceil(chars / 4) of the contents; bytes are never fewer."""
    for text in ("x", "hello world " * 100, "ünïcødé " * 50, "🙂" * 10):
        served = max(1, (len(text) + 3) // 4)
        assert prompt_token_bound([{"role": "user", "content": text}]) >= served


def test_concurrent_reservations_never_pass_any_cap() -> None:
    """32 threads reserving and committing at random: at no moment do spent plus reserved
    pass a cap, and the run ends on a budget, not past it."""
    budget = Budget(Limits(max_lm_calls=400, max_tokens=200_000, max_cost=1.0, timeout_s=None))
    rnd = random.Random(3)
    worsts = [Worst(rnd.randrange(100, 4000), 512, rnd.uniform(0.001, 0.03)) for _ in range(64)]
    seen_over: list[str] = []

    def watch() -> None:
        with budget._lock:
            if budget.cost_usd + budget.reserved_cost > 1.0 + 1e-9:
                seen_over.append(f"cost {budget.cost_usd + budget.reserved_cost}")
            if budget.prompt_tokens + budget.completion_tokens + budget.reserved_tokens > 200_000:
                seen_over.append("tokens")
            if budget.lm_calls + budget.reserved_calls > 400:
                seen_over.append("calls")

    def worker(seed: int) -> None:
        r = random.Random(seed)
        while True:
            worst = r.choice(worsts)
            try:
                res = budget.reserve(worst)
            except BudgetExhausted:
                return
            watch()
            time.sleep(r.uniform(0, 0.002))
            share = r.uniform(0.1, 1.0)
            budget.commit(
                res,
                int(worst.prompt_tokens * share),
                int(worst.completion_tokens * share),
                worst.cost_usd * share,
            )
            watch()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not seen_over, seen_over[:5]
    assert budget.exhausted is not None and budget.exhausted.budget in (
        "max_lm_calls",
        "max_tokens",
        "max_cost",
    )
    assert budget.cost_usd <= 1.0 + 1e-9 and budget.prompt_tokens + budget.completion_tokens <= 200_000
    assert budget.lm_calls <= 400 and budget.reserved_calls == 0 and budget.reserved_cost == 0


def test_a_refused_call_names_its_budget_and_what_is_left() -> None:
    budget = Budget(Limits(max_cost=0.05, timeout_s=None))
    with pytest.raises(BudgetExhausted) as info:
        budget.reserve(Worst(3000, 4096, 0.0485 + 0.01))
    assert info.value.budget == "max_cost" and "$0.0500" in info.value.message
    assert "--lm-max-tokens" in info.value.hint and budget.cancelled.is_set() and budget.lm_calls == 0


def test_the_fallback_hold_keeps_a_call_and_the_cap_still_wins() -> None:
    budget = Budget(Limits(max_lm_calls=3, max_tokens=10_000, timeout_s=None))
    budget.commit(budget.reserve(Worst(1000, 500)), 300, 100)
    hold = budget.hold_for_fallback(Worst(2000, 500))
    assert (hold.calls, hold.tokens) == (1, 2500)
    budget.commit(budget.reserve(Worst(1000, 500)), 300, 100)
    with pytest.raises(BudgetExhausted) as info:  # the third call is the fallback's
        budget.reserve(Worst(10, 10))
    assert info.value.budget == "max_lm_calls" and "fallback" in info.value.message
    res = budget.reserve(Worst(2000, 500), fallback=True)  # allowed after the stop
    budget.commit(res, 600, 50)
    assert budget.lm_calls == 3 and budget.hold.calls == 0
    with pytest.raises(BudgetExhausted):  # and there is never a fourth
        budget.reserve(Worst(1, 1), fallback=True)


def test_the_hold_never_takes_more_than_is_free() -> None:
    budget = Budget(Limits(max_lm_calls=1, max_cost=1.0, timeout_s=None))
    budget.commit(budget.reserve(Worst(10, 10, 0.7)), 10, 10, 0.6)
    hold = budget.hold_for_fallback(Worst(10, 10, 5.0))
    assert hold.calls == 0 and hold.cost_usd == pytest.approx(0.4)


def test_tenant_cost_reservations_span_runs() -> None:
    """Two runs of a tenant: a call that fits only once the other run's call has settled
    waits for it; one that cannot fit whatever happens is refused at once."""
    tenant = TenantAccount("t", TenantLimits(max_cost=1.0))
    first, second = Budget(Limits(timeout_s=None), tenant), Budget(Limits(timeout_s=None), tenant)
    in_flight = first.reserve(Worst(10, 10, 0.6))
    threading.Timer(0.3, lambda: first.commit(in_flight, 10, 10, 0.1)).start()
    res = second.reserve(Worst(10, 10, 0.5))  # waits for the first run's call: 0.1 + 0.5 fit
    assert not in_flight.usage_open
    second.commit(res, 10, 10, 0.5)
    third = Budget(Limits(timeout_s=None), tenant)
    with pytest.raises(BudgetExhausted) as info:  # 0.6 spent: 0.5 more never fits
        third.reserve(Worst(10, 10, 0.5))
    assert info.value.budget == "tenant_max_cost" and "over its limit of $1" in info.value.message
    assert tenant.cost_usd == pytest.approx(0.6) and tenant.reserved_cost == 0 and tenant.in_flight == 0


def test_a_call_waits_for_calls_in_flight_rather_than_end_the_run() -> None:
    """Worst cases in flight shrink to real usage when they return: a call that fits then
    is sent then, not refused; a call abandoned at its deadline is not waited for."""
    budget = Budget(Limits(max_cost=1.0, timeout_s=None))
    big = budget.reserve(Worst(1000, 100, 0.8))
    threading.Timer(0.3, lambda: budget.commit(big, 250, 50, 0.2)).start()
    res = budget.reserve(Worst(1000, 100, 0.8))  # 0.8 + 0.8 > 1 now; 0.2 + 0.8 fits later
    assert budget.lm_calls == 1 and budget.exhausted is None
    budget.count_call(res)  # abandoned: its worst case stays reserved, nobody waits for it
    with pytest.raises(BudgetExhausted) as info:
        budget.reserve(Worst(10, 10, 0.05))
    assert info.value.budget == "max_cost"


def test_failed_and_abandoned_calls() -> None:
    """A call sent counts whatever became of it; one never sent does not; an abandoned
    call keeps its worst case reserved until its thread reports."""
    budget = Budget(Limits(max_tokens=1000, timeout_s=None))
    budget.release(budget.reserve(Worst(100, 100)), sent=True)
    budget.release(budget.reserve(Worst(100, 100)), sent=False)
    assert budget.lm_calls == 1 and budget.reserved_tokens == 0
    res = budget.reserve(Worst(300, 100))
    budget.count_call(res)
    assert budget.lm_calls == 2 and budget.reserved_tokens == 400
    over = budget.commit(res, 350, 120)  # more than reserved: recorded as it is, and said
    assert over and budget.prompt_tokens == 350 and budget.lm_calls == 2 and budget.reserved_tokens == 0


def test_a_usage_past_a_cap_stops_the_run() -> None:
    budget = Budget(Limits(max_tokens=1000, timeout_s=None))
    budget.commit(budget.reserve(Worst(100, 100)), 900, 200)  # a provider that ignored max_tokens
    assert budget.exhausted is not None and budget.exhausted.budget == "max_tokens"


# ---- model calls with the real client


def _calls(server: ScriptedModelServer, budget: Budget, *, lm_timeout: float, model: str | None = None):
    from rlm_sandbox.rlm.calls import ModelCalls
    from rlm_sandbox.rlm.lm import LiteLLMClient, preload_litellm
    from rlm_sandbox.rlm.models import ModelRouter
    from rlm_sandbox.trace.writer import Tracer

    preload_litellm()  # its import is not the model's time (nor this test's)

    client = LiteLLMClient(
        model or server.model_name,
        api_base=server.url,
        api_key=server.api_key,
        timeout_s=lm_timeout,
        max_retries=4,
    )
    events: list[dict] = []
    tracer = Tracer("unit", None)
    tracer.subscribe(events.append)
    calls = ModelCalls(
        ModelRouter(client, client),
        budget,
        tracer,
        lm_timeout=lm_timeout,
        max_tokens=700,
        on_fatal=lambda e: None,
    )
    return calls, client, events


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_max_tokens_is_sent_and_reserved_at_the_models_limit() -> None:
    with ScriptedModelServer(lambda body: "y" * 10_000) as server:
        budget = Budget(Limits(timeout_s=None))
        calls, client, events = _calls(server, budget, lm_timeout=30)
        assert (
            run_sync(calls.call(client, [{"role": "user", "content": "hi"}], "root", 0, "step")) == "y" * 2800
        )
        assert server.requests.last()["max_tokens"] == 700  # type: ignore[index]
        start = next(e for e in events if e["event"] == "lm_start")
        assert start["reserved_tokens"] == prompt_token_bound([{"role": "user", "content": "hi"}]) + 700
        assert budget.completion_tokens == server.requests.completion_tokens == 700
        # gpt-4o is priced (output at most 16384 tokens); the call's cost is LiteLLM's.
        calls, client, _ = _calls(server, budget, lm_timeout=30, model="openai/gpt-4o")
        assert calls.completion_limit(client) == 700 and calls.worst(client, []).cost_usd > 0


def test_a_trickling_server_is_abandoned_at_the_calls_limit() -> None:
    """A server that sends one byte a second defeats every read timeout: the caller stops
    waiting at the call's limit (plus its slack) all the same, and the reservation is held
    until the abandoned thread ends."""
    with ScriptedModelServer(trickles(0.5)) as server:
        budget = Budget(Limits(timeout_s=None))
        calls, client, events = _calls(server, budget, lm_timeout=2)
        t0 = time.monotonic()
        with pytest.raises(LMError) as info:
            run_sync(calls.call(client, [{"role": "user", "content": "hi"}], "root", 0, "step"))
        assert time.monotonic() - t0 < 30  # generous: the limit is 2 s + 2 s of slack
        assert info.value.kind == "timeout" and "abandoned" in info.value.message
        assert budget.lm_calls == 1 and budget.reserved_tokens > 0 and server.requests.count >= 1
        assert any(e["event"] == "lm_abandoned" for e in events)
    # The server closed: the abandoned call's thread ends, and its reservation is released.
    assert _wait_for(lambda: budget.reserved_tokens == 0 and budget.reserved_calls == 0)


def test_a_silent_server_cannot_outlive_the_runs_wall_time() -> None:
    from rlm_sandbox.rlm.lm import preload_litellm

    preload_litellm()  # before the 3 s wall clock starts: the import is not the run's time
    with ScriptedModelServer(never_answers) as server:
        budget = Budget(Limits(timeout_s=3))
        calls, client, events = _calls(server, budget, lm_timeout=300)
        t0 = time.monotonic()
        with pytest.raises(BudgetExhausted) as info:
            run_sync(calls.call(client, [{"role": "user", "content": "hi"}], "root", 0, "step"))
        assert time.monotonic() - t0 < 30  # generous: 3 s of wall time + 2 s of slack
        assert info.value.budget == "timeout" and budget.lm_calls == 1 and server.requests.count >= 1
        # The client gives up at the call's deadline (the run's), so the run ends on time
        # whether or not the caller had to abandon it (a trickling server: see above).
        assert "lm_cut" in {e["event"] for e in events}
