"""``GET /metrics``: the service in Prometheus' text format (``prometheus_client``).

Counters move when a run ends, from its outcome (the same numbers ``GET /v1/runs/ID``
shows): runs by tenant and status, model calls, tokens, cost, and the run-time histogram.
Gauges are read when scraped: runs running and queued per tenant, containers alive per
tenant (from the runs' own ``node_start``/``node_end`` events) and in the whole process.
The registry is the service's own, not the process-wide default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from rlm_sandbox.serve.records import RunRecord
    from rlm_sandbox.serve.registry import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class _Live:
    """The gauges, read from the registry at scrape time."""

    def __init__(self, runs: Registry, process_containers: Callable[[], int]) -> None:
        self.runs = runs
        self.process_containers = process_containers

    def collect(self) -> Iterable[Metric]:
        running = GaugeMetricFamily("rlm_serve_runs_running", "runs going now", labels=["tenant"])
        queued = GaugeMetricFamily("rlm_serve_queue_depth", "runs waiting to start", labels=["tenant"])
        alive = GaugeMetricFamily("rlm_serve_containers_alive", "sandbox containers alive", labels=["tenant"])
        per_tenant: dict[str, int] = dict.fromkeys(self.runs.tenants, 0)
        for record in list(self.runs.runs.values()):
            per_tenant[record.tenant] = per_tenant.get(record.tenant, 0) + record.containers
        for name in self.runs.tenants:
            running.add_metric([name], self.runs.running(name))
            queued.add_metric([name], self.runs.queued(name))
            alive.add_metric([name], per_tenant[name])
        total = GaugeMetricFamily(
            "rlm_serve_process_containers_alive", "sandbox containers this process has not removed yet"
        )
        total.add_metric([], self.process_containers())
        yield from (running, queued, alive, total)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double every counter for nothing here
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter(
            "rlm_serve_runs", "runs ended, by tenant and status", ["tenant", "status"], registry=r
        )
        self.submitted = Counter("rlm_serve_runs_submitted", "runs accepted", ["tenant"], registry=r)
        self.rejected = Counter(
            "rlm_serve_requests_rejected", "requests refused, by reason", ["tenant", "reason"], registry=r
        )
        self.model_calls = Counter(
            "rlm_serve_model_calls", "model calls of ended runs", ["tenant"], registry=r
        )
        self.tokens = Counter("rlm_serve_tokens", "tokens of ended runs", ["tenant", "kind"], registry=r)
        self.cost = Counter("rlm_serve_cost_usd", "USD spent by ended runs", ["tenant"], registry=r)
        self.duration = Histogram(
            "rlm_serve_run_duration_seconds", "wall time of ended runs that started", ["tenant"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "rlm_serve_http_requests", "HTTP requests, by route and status code", ["method", "route", "code"],
            registry=r,
        )  # fmt: skip

    def watch(self, runs: Registry, process_containers: Callable[[], int]) -> None:
        self.registry.register(_Live(runs, process_containers))

    def run_ended(self, record: RunRecord) -> None:
        out = record.outcome or {}
        tenant = record.tenant
        self.runs.labels(tenant, record.status).inc()
        self.model_calls.labels(tenant).inc(int(out.get("lm_calls") or 0))
        tokens = out.get("tokens") or {}
        self.tokens.labels(tenant, "prompt").inc(int(tokens.get("prompt") or 0))
        self.tokens.labels(tenant, "completion").inc(int(tokens.get("completion") or 0))
        self.cost.labels(tenant).inc(float(out.get("cost_usd") or 0.0))
        if record.started is not None and record.finished is not None:
            self.duration.labels(tenant).observe(record.finished - record.started)

    def text(self) -> bytes:
        return generate_latest(self.registry)
