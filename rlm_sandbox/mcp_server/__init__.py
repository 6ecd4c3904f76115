"""``rlm-sandbox mcp``: the engine as an MCP tool (``rlm_query``) on stdio.

:mod:`.paths` decides which files a client may name, :mod:`.service` turns one call into
one run (cancellable, on :class:`~rlm_sandbox.rlm.aio.AsyncRLM`), :mod:`.progress` turns
the run's trace events into progress notifications, :mod:`.results` says the outcome, and
:mod:`.server` is the MCP server itself. Only :mod:`.server` imports the ``mcp`` SDK, and
nothing imports this package but the ``mcp`` command, so ``rlm-sandbox --help`` stays fast.
(The package is not named ``mcp``: that would shadow the SDK.)
"""
