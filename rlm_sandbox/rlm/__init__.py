"""The controller: the RLM loop on the host, one node per container, one budget per run.

``api`` (the public entry points) builds a ``Run`` (what a whole run shares: budget, trace,
models, engines, pools) and a root ``Node``; a node's cells may start child nodes or plain
model calls. ``session`` keeps one node open across questions. ``config`` and ``result``
are the run's settings and outcome; ``budget``/``tenants`` bound it; ``lm`` (the model clients: OpenAI-compatible
endpoints over httpx, every other provider through LiteLLM) and ``models`` call the models; ``answers``, ``tools``, ``compaction``, ``fallback`` are the node's helpers;
``context``, ``parsing``, ``digest`` and ``prompts`` are pure functions and data.
"""
