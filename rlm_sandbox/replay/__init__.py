"""Replay a recorded run against its recorded model responses, and say where it diverges.

A trace's ``lm_call`` events carry the digest of each request and the whole response, so a
run can be played again with no model: a local OpenAI-compatible server answers each
request whose digest was recorded with the recorded text, through the real model HTTP path,
while the code runs in fresh containers. Whatever the code does differently (another
input, another image, a nondeterministic cell) changes the next request, so the first
divergence is found exactly.

One part of a request legitimately differs between two runs of the same thing: the
``Budgets:`` line of a node's system prompt (calls, tokens, seconds left when the node
started) depends on timing and on the order of parallel siblings. The engine's own request
digest leaves that line out, so the same request matches exactly in both runs.

The package: ``recording`` reads a trace for replay (untrusted: only its answers are used),
``policy`` answers the replayed requests from it, ``compare`` sets the two runs side by
side on the node model every trace reader shares, ``run`` configures and drives a replay
(every limit from the user).
"""

from rlm_sandbox.replay.compare import Divergence, ReplayReport, compare
from rlm_sandbox.replay.policy import DIVERGED_REPLY, ReplayPolicy, Served
from rlm_sandbox.replay.recording import RecordedCall, Recording, TraceNotReplayable, load_recording
from rlm_sandbox.replay.run import replay_config, run_replay

__all__ = [
    "DIVERGED_REPLY",
    "Divergence",
    "RecordedCall",
    "Recording",
    "ReplayPolicy",
    "ReplayReport",
    "Served",
    "TraceNotReplayable",
    "compare",
    "load_recording",
    "replay_config",
    "run_replay",
]
