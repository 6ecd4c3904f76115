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


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "openai/gpt-5", "gpt-4o", "gemini/gemini-2.5-pro"])
@pytest.mark.parametrize(("prompt", "completion", "cached"), [(2000, 100, 1024), (300_000, 1000, 200_000)])
def test_cached_prompt_tokens_cost_what_litellm_says(
    model: str, prompt: int, completion: int, cached: int
) -> None:
    """OpenAI reports prompt tokens read from its cache (``prompt_tokens_details.cached_tokens``);
    LiteLLM's ``completion_cost`` prices them at the cache-read rate, and so do we."""
    from rlm_sandbox.rlm.lm import preload_litellm

    litellm = preload_litellm()
    response = litellm.ModelResponse(
        model=model.split("/", 1)[-1],
        choices=[{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
        usage={
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    )
    theirs = litellm.completion_cost(completion_response=response, model=model)
    price = price_of(model)
    assert price is not None
    assert price.cost(prompt, completion, cached) == pytest.approx(theirs, rel=1e-9)
    assert price.cost(prompt, completion, cached) < price.cost(prompt, completion)


def test_a_price_registered_with_litellm_counts_once_it_is_loaded() -> None:
    from rlm_sandbox.rlm.lm import preload_litellm

    litellm = preload_litellm()
    litellm.register_model(
        {
            "openai/priced-for-test": {
                "input_cost_per_token": 0.001,
                "output_cost_per_token": 0.002,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    price = price_of("openai/priced-for-test")
    assert price is not None and price.cost(10, 5) == pytest.approx(0.02)
