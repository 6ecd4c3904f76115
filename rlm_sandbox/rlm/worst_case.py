"""What one model call may use at most, reserved against the budgets before it is sent.

*The prompt bound.* A byte-level BPE tokenizer (GPT-4o's o200k, cl100k, Llama 3, Qwen,
Mistral's tekken; Claude's is BPE too) partitions the UTF-8 bytes of a text into tokens of at
least one byte each, so a text never has more tokens than bytes; SentencePiece with byte
fallback (Llama 2, Gemma) is the same plus a dummy-prefix token. Around the text, chat
templates add a few special tokens per message (OpenAI: 3, plus 3 to prime the reply; Llama
3: about 5; Gemma: about 5) and some a preamble per request (Llama 3.1's date lines, about
25). The bound is therefore UTF-8 bytes of every role and content, plus
:data:`TOKENS_PER_MESSAGE` per message and :data:`TOKENS_PER_REQUEST` per request. It is
provider-independent (an ``--api-base`` server's tokenizer is unknown) and holds against a
hostile prompt (a model-written ``llm_query`` text is hostile input: control characters
reach one token per byte, emoji 1.3 bytes per token). A model's tokenizer would be exact for
that model only (none is at hand for most providers); a guessed ratio would not be a cap.

Its price is pessimism: GPT-4o counts 3.5 bytes per token in English, 4.5 in code, 2.3 in a
typical log, so a prompt is reserved at 1.5-4.5x its real count (4x the scripted test
server's count). A reservation only lasts while its call is in flight, and a call that does
not fit waits for the calls in flight rather than end the run, so this costs a run at its
margin: it stops when what is left no longer covers the next call's worst case, about one
worst-case call earlier than exact counts would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Special tokens a chat template may add around one message (role markers, separators).
TOKENS_PER_MESSAGE = 16
#: Tokens a chat template may add once per request (reply priming, a default preamble).
TOKENS_PER_REQUEST = 64


def text_bytes(value: Any) -> int:
    """UTF-8 bytes of a message field: an upper bound of its tokens under any byte-level BPE."""
    if value is None:
        return 0
    if not isinstance(value, str):
        value = str(value)
    if value.isascii():  # O(1) in CPython: no copy for the common case
        return len(value)
    return len(value.encode("utf-8", errors="surrogatepass"))


def prompt_token_bound(messages: Iterable[Mapping[str, Any]]) -> int:
    """Tokens a provider can count for this prompt at most (see the module's docstring)."""
    total = TOKENS_PER_REQUEST
    for message in messages:
        total += TOKENS_PER_MESSAGE + text_bytes(message.get("role")) + text_bytes(message.get("content"))
    return total


@dataclass(frozen=True, slots=True)
class Worst:
    """What one model call may use at most: it is reserved before the call is sent."""

    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Reservation:
    """One call's share of the budgets while it is in flight."""

    worst: Worst
    call_open: bool = True  # its call slot is reserved, not yet counted as a call made
    usage_open: bool = True  # its tokens and cost are reserved, not yet turned into usage
    abandoned: bool = False  # nobody waits for it: its thread may take long to end


@dataclass(frozen=True, slots=True)
class Hold:
    """What is kept back for the root's fallback answer (see the module's docstring)."""

    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0


NO_HOLD = Hold()
