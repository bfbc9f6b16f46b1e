"""Operational routes: liveness, the node's view of the cluster state and its changes as
they happen, its metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from msgspec import to_builtins
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.admin_response import Health
from exo.api.anthropic import is_anthropic_path
from exo.api.backend import Backend, InvalidRequest
from exo.api.errors import backend_error_response, json_response
from exo.api.ollama import is_ollama_path
from exo.metrics import CONTENT_TYPE, NodeMetrics


def register_admin(app: QuartTrio, backend: Backend) -> None:
    """Add `GET /healthz` (`{"status": "ok"}`) and `GET /state` (backend.state_view())."""

    @app.get("/healthz")
    async def healthz() -> TrioResponse:
        return json_response(to_builtins(Health("ok")))

    @app.get("/state")
    async def state() -> TrioResponse:
        return json_response(to_builtins(backend.state_view()))

    @app.get("/events")
    async def events() -> TrioResponse:
        """Server-sent events: `snapshot` (the state view) to start from, then `event` per
        replicated event (its `id` is its index), so a page applies changes instead of
        polling the state. `?from=N` or `Last-Event-ID` (an EventSource reconnecting)
        resumes after index N when the node still has those events at hand.
        `?view=sections` sends `sections` instead: the state cut into the sections a page
        shows, all at first, then only those that changed (the dashboard reads this)."""
        view = request.args.get("view", "events")
        if view not in ("events", "sections"):
            error = InvalidRequest(f"view must be 'events' or 'sections', got {view!r}", "view")
            return backend_error_response(error)
        if view == "sections":
            return _event_stream(backend.section_updates())
        raw = request.args.get("from", request.headers.get("Last-Event-ID"))
        after: int | None = None
        if raw is not None:
            if not (raw.isascii() and raw.isdigit()):
                error = InvalidRequest(f"from must be an event index (>= 0), got {raw!r}", "from")
                return backend_error_response(error)
            after = int(raw)
        return _event_stream(backend.updates(after))


def register_metrics(app: QuartTrio, metrics: NodeMetrics) -> None:
    """Add `GET /metrics` (Prometheus text format) and count every answered request."""

    @app.get("/metrics")
    async def scrape() -> TrioResponse:
        return TrioResponse(metrics.render(), 200, {"Content-Type": CONTENT_TYPE})

    @app.after_request
    async def count(response: TrioResponse) -> TrioResponse:
        if request.url_rule is None:  # one series for every path no route serves
            dialect, route = "none", "unmatched"
        else:
            route = request.url_rule.rule
            dialect = dialect_of(route)
        metrics.count_request(dialect, route, request.method, response.status_code)
        return response


def dialect_of(route: str) -> str:
    """The API dialect a route rule belongs to."""
    if is_ollama_path(route) or route == "/":  # `/` is Ollama's "is it running"
        return "ollama"
    if is_anthropic_path(route):
        return "anthropic"
    if route.startswith("/v1/responses"):
        return "responses"
    if route.startswith("/v1/"):
        return "openai"
    return "exo"


def _event_stream(updates: AsyncIterator[tuple[str, dict[str, object]]]) -> TrioResponse:
    return TrioResponse(
        _server_sent(updates),
        200,
        {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
    )


async def _server_sent(
    updates: AsyncIterator[tuple[str, dict[str, object]]],
) -> AsyncIterator[bytes]:
    async for kind, data in updates:
        if kind == "keepalive":
            yield b": keep-alive\n\n"
            continue
        index = data.get("index")
        head = f"event: {kind}\n" + (f"id: {index}\n" if isinstance(index, int) else "")
        yield (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()
