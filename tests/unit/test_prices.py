"""Prices come from LiteLLM's own bundled map, read as data: they must equal LiteLLM's numbers."""

from __future__ import annotations

import sys

import pytest

from rlm_sandbox.rlm.prices import Price, context_window, price_file, price_of


def test_the_bundled_map_is_found_without_importing_litellm() -> None:
    was_loaded = "litellm" in sys.modules
    assert price_file() is not None
    assert price_of("openai/gpt-4o-mini") is not None
    assert ("litellm" in sys.modules) == was_loaded


def test_unknown_models_have_no_price() -> None:
    assert price_of("openai/scripted") is None
    assert price_of("totally-unknown-model") is None
    assert context_window("openai/scripted") is None


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4o",
        "gpt-4o-mini",
        "anthropic/claude-sonnet-4-5",
        "gemini/gemini-2.5-pro",
        "openai/gpt-5",
    ],
)
@pytest.mark.parametrize(("prompt", "completion"), [(1000, 200), (300_000, 1000)])
def test_costs_equal_litellms_own(model: str, prompt: int, completion: int) -> None:
    from rlm_sandbox.rlm.lm import preload_litellm

    litellm = preload_litellm()
    price = price_of(model)
    if price is None:
        pytest.fail(f"{model} should be in LiteLLM's price map")
    theirs = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion))
    assert price.cost(prompt, completion) == pytest.approx(theirs, rel=1e-9)
    assert price.worst_cost(prompt, completion) >= price.cost(prompt, completion)


def test_context_window_matches_litellm() -> None:
    from rlm_sandbox.rlm.lm import preload_litellm

    litellm = preload_litellm()
    for model in ("openai/gpt-4o", "gpt-4o-mini"):
        assert context_window(model) == litellm.get_model_info(model)["max_input_tokens"]


def test_a_tier_applies_only_above_its_threshold() -> None:
    price = Price("m", 1e-6, 2e-6, tiers=((200_000, 3e-6, 5e-6),))
    assert price.rates(200_000) == (1e-6, 2e-6)
    assert price.rates(200_001) == (3e-6, 5e-6)
    assert price.cost(100, 10) == pytest.approx(100 * 1e-6 + 10 * 2e-6)
    assert price.cost(300_000, 10) == pytest.approx(300_000 * 3e-6 + 10 * 5e-6)


def test_the_worst_case_bounds_every_tier_and_negative_counts_cost_nothing() -> None:
    price = Price("m", 1e-6, 8e-6, tiers=((1000, 3e-6, 2e-6),))
    assert price.worst_cost(10, 10) == pytest.approx(10 * 3e-6 + 10 * 8e-6)
    assert all(price.worst_cost(p, 50) >= price.cost(p, 50) for p in (0, 999, 1000, 1001, 10**6))
    assert price.cost(-5, -5) == 0.0


def test_a_provider_prefix_is_looked_up_without_it() -> None:
    routed, bare = price_of("somecloud/gpt-4o"), price_of("gpt-4o")
    assert routed is not None and bare is not None
    assert routed.key == bare.key == "gpt-4o"
    assert routed == bare
