"""Operational routes: liveness, the node's view of the cluster state, its metrics."""

from __future__ import annotations

from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend
from exo.api.errors import json_response
from exo.metrics import CONTENT_TYPE, NodeMetrics


def register_admin(app: QuartTrio, backend: Backend) -> None:
    """Add `GET /healthz` (`{"status": "ok"}`) and `GET /state` (backend.state_view())."""

    @app.get("/healthz")
    async def healthz() -> TrioResponse:
        return json_response({"status": "ok"})

    @app.get("/state")
    async def state() -> TrioResponse:
        return json_response(backend.state_view())


def register_metrics(app: QuartTrio, metrics: NodeMetrics) -> None:
    """Add `GET /metrics` (Prometheus text format) and count every answered request."""

    @app.get("/metrics")
    async def scrape() -> TrioResponse:
        return TrioResponse(metrics.render(), 200, {"Content-Type": CONTENT_TYPE})

    @app.after_request
    async def count(response: TrioResponse) -> TrioResponse:
        rule = request.url_rule.rule if request.url_rule is not None else None
        metrics.count_request(rule, request.method, response.status_code)
        return response
