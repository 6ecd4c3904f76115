"""What a model costs and how much it reads, from LiteLLM's own price map, read as data.

Costs must stay LiteLLM's numbers (users compare them with LiteLLM's and their provider's
bills), but importing LiteLLM takes seconds. The installed ``litellm`` package ships its
price map as a JSON file (``model_prices_and_context_window_backup.json``, the same table
``litellm.model_cost`` holds when ``LITELLM_LOCAL_MODEL_COST_MAP=True``): it is found and
read here without importing the package, once per process.

Budgets need a price *before* a call (to reserve its worst case) as well as after it, so
:class:`Price` offers both: ``cost`` as LiteLLM computes it for plain text usage (base
rates, or the ``_above_Nk_tokens`` tier the prompt falls in; prompt tokens the provider
read from its cache at the cache-read rate, as OpenAI reports them in
``prompt_tokens_details.cached_tokens``), and ``worst_cost``, an upper bound whatever tier
applies. Service tiers, batches, cache writes and audio/image rates are not used by this
engine's calls and are not modelled.

When LiteLLM is already imported (a program that uses it, or a run that needed it), its live
``litellm.model_cost`` is read first, so a price registered with ``litellm.register_model``
counts on every path, as it did when every call went through LiteLLM.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRICE_FILE = "model_prices_and_context_window_backup.json"
_TIER = re.compile(r"^input_cost_per_token_above_(\d+)(k?)_tokens$")

_lock = threading.Lock()
_table: dict[str, dict[str, Any]] | None = None


def price_file() -> Path | None:
    """The bundled price map of the installed ``litellm``, found without importing it."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / PRICE_FILE
        if path.is_file():
            return path
    return None


def _load() -> dict[str, dict[str, Any]]:
    global _table
    if _table is None:
        with _lock:
            if _table is None:
                path = price_file()
                data: Any = {}
                if path is not None:
                    try:
                        data = json.loads(path.read_text(encoding="utf-8"))
                    except (OSError, ValueError):
                        data = {}
                _table = {k: v for k, v in data.items() if isinstance(v, dict) and k != "sample_spec"}
    return _table


@dataclass(frozen=True)
class Price:
    """USD per token for one model, and its context limits (None where unknown)."""

    key: str  # the entry of the price map that matched
    input_per_token: float
    output_per_token: float
    tiers: tuple[tuple[int, float, float], ...] = field(default=())  # (threshold, input, output), ascending
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    cache_read_per_token: float | None = None  # None: cached prompt tokens cost the input rate
    cache_read_tiers: tuple[tuple[int, float], ...] = field(default=())  # (threshold, rate), ascending

    def rates(self, prompt_tokens: int) -> tuple[float, float]:
        """The (input, output) rates LiteLLM applies to a prompt of this size: the highest
        tier whose threshold the prompt exceeds, else the base rates."""
        rates = (self.input_per_token, self.output_per_token)
        for threshold, inp, out in self.tiers:
            if prompt_tokens > threshold:
                rates = (inp, out)
        return rates

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD for one call, as LiteLLM's ``completion_cost`` computes it: ``cached_tokens``
        (part of ``prompt_tokens``) at the cache-read rate of the prompt's tier."""
        inp, out = self.rates(prompt_tokens)
        cached = min(max(0, cached_tokens), max(0, prompt_tokens))
        cache_rate = self.cache_read_per_token
        for threshold, rate in self.cache_read_tiers:
            if prompt_tokens > threshold:
                cache_rate = rate
        if cache_rate is None:
            cache_rate = inp
        return (max(0, prompt_tokens) - cached) * inp + cached * cache_rate + max(0, completion_tokens) * out

    def worst_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """An upper bound of ``cost`` for at most these many tokens, whatever tier applies."""
        inp = max([self.input_per_token, *(t[1] for t in self.tiers)])
        out = max([self.output_per_token, *(t[2] for t in self.tiers)])
        return max(0, prompt_tokens) * inp + max(0, completion_tokens) * out


def _candidates(model: str) -> list[str]:
    """The price map's keys a LiteLLM model string may be filed under: as given, without its
    provider prefix (``openai/gpt-4o`` is ``gpt-4o``), and the rest of a routed name."""
    out = [model]
    if "/" in model:
        _provider, rest = model.split("/", 1)
        out.append(rest)
        if "/" in rest:
            out.append(rest.split("/", 1)[1])
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _entry(key: str) -> dict[str, Any] | None:
    """The price map's entry for ``key``: LiteLLM's live table when it is loaded (it holds what
    ``register_model`` added), else the bundled file."""
    litellm = sys.modules.get("litellm")
    live = getattr(litellm, "model_cost", None) if litellm is not None else None
    if isinstance(live, dict):
        entry = live.get(key)
        if isinstance(entry, dict):
            return entry
    entry = _load().get(key)
    return entry if isinstance(entry, dict) else None


def model_entry(model: str) -> dict[str, Any] | None:
    """The price map's entry for ``model`` (provider, mode, limits, rates), None when unknown:
    the model clients read a model's provider and API mode from it without importing LiteLLM."""
    for key in _candidates(model):
        entry = _entry(key)
        if entry is not None:
            return entry
    return None


def price_of(model: str, table: dict[str, Any] | None = None) -> Price | None:
    """The price of ``model`` (a LiteLLM model string), or None when LiteLLM does not know it
    (a local server's own model name): such calls cost nothing that can be counted.
    ``table`` is another map of the same shape; by default LiteLLM's live ``model_cost`` when
    LiteLLM is loaded (with the models a program registered at run time), else the bundled map."""
    for key in _candidates(model):
        entry = table.get(key) if table is not None else _entry(key)
        if not isinstance(entry, dict):
            continue
        inp = _number(entry.get("input_cost_per_token"))
        out = _number(entry.get("output_cost_per_token"))
        if inp is None and out is None:
            continue
        tiers = []
        cache_tiers = []
        for name, value in entry.items():
            match = _TIER.match(name)
            rate = _number(value)
            if match and rate is not None:
                threshold = int(match.group(1)) * (1000 if match.group(2) else 1)
                suffix = name.removeprefix("input_cost_per_token")
                out_rate = _number(entry.get("output_cost_per_token" + suffix))
                tiers.append((threshold, rate, out_rate if out_rate is not None else out or 0.0))
                cache_rate = _number(entry.get("cache_read_input_token_cost" + suffix))
                if cache_rate is not None:
                    cache_tiers.append((threshold, cache_rate))
        return Price(
            key=key,
            input_per_token=inp or 0.0,
            output_per_token=out or 0.0,
            tiers=tuple(sorted(tiers)),
            max_input_tokens=_int(entry.get("max_input_tokens")) or _int(entry.get("max_tokens")),
            max_output_tokens=_int(entry.get("max_output_tokens")),
            cache_read_per_token=_number(entry.get("cache_read_input_token_cost")),
            cache_read_tiers=tuple(sorted(cache_tiers)),
        )
    return None


def context_window(model: str) -> int | None:
    """Tokens ``model`` accepts in a prompt, as LiteLLM knows it (None when it does not)."""
    for key in _candidates(model):
        entry = _entry(key)
        if entry is not None:
            window = _int(entry.get("max_input_tokens")) or _int(entry.get("max_tokens"))
            if window:
                return window
    return None
