"""Operational routes: liveness and the node's view of the cluster state."""

from __future__ import annotations

from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend
from exo.api.errors import json_response


def register_admin(app: QuartTrio, backend: Backend) -> None:
    """Add `GET /healthz` (`{"status": "ok"}`) and `GET /state` (backend.state_view())."""

    @app.get("/healthz")
    async def healthz() -> TrioResponse:
        return json_response({"status": "ok"})

    @app.get("/state")
    async def state() -> TrioResponse:
        return json_response(backend.state_view())
