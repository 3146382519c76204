"""Prometheus ``/metrics`` (setting ``metrics_enabled``), through prometheus-client.

Series (per process; sum them over API nodes): ``fluxserve_requests_total{method,status}``,
``fluxserve_jobs_total{status}`` (jobs ended), ``fluxserve_queue_depth``,
``fluxserve_engine_seconds_total`` (start to end of jobs run), ``fluxserve_credits_spent_total``
(credits of charged jobs, at catalog prices), ``fluxserve_jobs_routed_total{model,served_by}``
(overflow decisions, and jobs an upstream did not accept sent back here). The route needs a
key with the ``admin`` scope once keys exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from fluxserve.api.auth import bfl_auth
from fluxserve.api.state import AppState, get_state
from fluxserve.records import Job


class Metrics:
    """The server's series, in a registry of their own (one per app)."""

    def __init__(self, state: AppState) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fluxserve_requests", "HTTP requests answered.", ["method", "status"], registry=self.registry
        )
        self.jobs = Counter("fluxserve_jobs", "Jobs ended, by status.", ["status"], registry=self.registry)
        self.engine_seconds = Counter(
            "fluxserve_engine_seconds", "Seconds from start to end of jobs that ran.", registry=self.registry
        )
        self.credits = Counter(
            "fluxserve_credits_spent",
            "Credits of charged jobs (1 credit = 0.01 USD).",
            registry=self.registry,
        )
        self.routed = Counter(
            "fluxserve_jobs_routed",
            "Overflow decisions: new jobs of route = 'overflow' models, by where they run.",
            ["model", "served_by"],
            registry=self.registry,
        )
        state.service.on_routed.append(lambda model, served_by: self.routed.labels(model, served_by).inc())
        queue = Gauge("fluxserve_queue_depth", "Jobs waiting in the queue.", registry=self.registry)
        queue.set_function(lambda: float(state.service.queue.depth()))

    def job_ended(self, job: Job, charged: bool, cost: float) -> None:
        """Count one job's end (an ``Accounting.on_end`` observer)."""
        self.jobs.labels(status=str(job.status)).inc()
        if job.started_at is not None and job.finished_at is not None:
            self.engine_seconds.inc(max(0.0, job.finished_at - job.started_at))
        if charged:
            self.credits.inc(cost)


def install_metrics(app: FastAPI, state: AppState) -> Metrics:
    """Add ``GET /metrics`` and the request counter to ``app``."""
    metrics = Metrics(state)
    if state.accounting is not None:
        state.accounting.on_end.append(metrics.job_ended)

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        metrics.requests.labels(method=request.method, status=str(response.status_code)).inc()
        return response

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics(
        owner: str | None = Depends(bfl_auth), st: AppState = Depends(get_state)
    ) -> Response:
        if st.accounting is not None and "admin" not in st.accounting.grant(owner).scopes:
            raise HTTPException(403, "/metrics needs a key with the 'admin' scope.")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
