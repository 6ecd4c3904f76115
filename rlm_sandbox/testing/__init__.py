"""What tests, demos and benchmarks need to run the real engine without a model API.

``server`` is an OpenAI-compatible chat-completions server on 127.0.0.1 that answers with a
*policy* (a plain callable); ``replies`` scripts failures; ``policies`` holds the scripted RLM
model; ``step_code`` the code its nodes write; ``logs`` generates logs with known answers; ``client`` plays a policy in-process (no HTTP).
Stdlib only, and no LiteLLM import: importing this package must stay cheap.
"""

from rlm_sandbox.testing.client import AsyncScriptedClient, ScriptedClient
from rlm_sandbox.testing.logs import DEFAULT_NEEDLE, DISK_PHRASE, LogStats, generate_log
from rlm_sandbox.testing.policies import answer_leaf, grep_first_policy, messages_of, rlm_policy
from rlm_sandbox.testing.replies import (
    HTTPReply,
    Policy,
    Reply,
    Stall,
    always_status,
    error_body,
    fail_then,
    garbage,
    never_answers,
    sequence_policy,
    trickles,
)
from rlm_sandbox.testing.server import RequestLog, ScriptedModelServer
from rlm_sandbox.testing.step_code import COUNT_TASK_RE, MAX_PIECE, NOT_FOUND, build_step1_code

__all__ = [
    "COUNT_TASK_RE",
    "DEFAULT_NEEDLE",
    "DISK_PHRASE",
    "MAX_PIECE",
    "NOT_FOUND",
    "AsyncScriptedClient",
    "HTTPReply",
    "LogStats",
    "Policy",
    "Reply",
    "RequestLog",
    "ScriptedClient",
    "ScriptedModelServer",
    "Stall",
    "always_status",
    "answer_leaf",
    "build_step1_code",
    "error_body",
    "fail_then",
    "garbage",
    "generate_log",
    "grep_first_policy",
    "messages_of",
    "never_answers",
    "rlm_policy",
    "sequence_policy",
    "trickles",
]
