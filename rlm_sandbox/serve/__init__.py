"""``rlm-sandbox serve``: Recursive Language Model runs over HTTP, for several tenants at once.

One long-lived process keeps the model clients, the Docker engine and the image hot and runs
many tenants' runs on one event loop, on the same run lifecycle as everything else
(:class:`rlm_sandbox.rlm.aio.AsyncRLM`). The rooms:

==================  ==========================================================================
``config``          what the service is told: its tenants (from the operator's settings only)
``auth``            bearer token -> tenant, by SHA-256 and a constant-time comparison
``errors``          one error shape for every answer that is not a success
``limits``          what a request may ask for: fields that only tighten the tenant's limits
``spool``           request bodies read with a cap: uploads streamed to a spool file
``records``         one run as the service sees it: status, events (for SSE), outcome
``registry``        every run, per tenant: capacity, the queue, cancelling, shutting down
``runner``          a run's life: AsyncRLM, its events, its outcome, its spool removed
``routes``          ``/v1/runs`` and its sub-resources
``openai_compat``   ``/v1/chat/completions`` and ``/v1/models``
``metrics``         ``/metrics`` (Prometheus)
``access_log``      one JSON line per request, never a token
``app``             the Starlette application, ``/healthz`` (asks ``sandbox/readiness``)
``server``          uvicorn, and what SIGTERM does
==================  ==========================================================================

Nothing here is imported by ``import rlm_sandbox`` or ``rlm-sandbox --help``: the CLI
command imports it when it runs.
"""
