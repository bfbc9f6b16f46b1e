"""The web dashboard: one HTML page, its script and its stylesheet, served from the package
(no CDN, no JavaScript build). The page reads `GET /events?view=sections` and acts through
the API's own routes; this module only serves the files."""

from __future__ import annotations

from importlib.resources import files

from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import NotFound

from exo.api.errors import http_error_response

DASHBOARD_PATH = "/dashboard"
# The files of the page, by the name it asks for them under /dashboard/.
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def wants_page() -> bool:
    """Whether the request is a browser's (it prefers HTML), not a script's `GET /`, which
    keeps Ollama's "Ollama is running"."""
    accept = request.accept_mimetypes
    return accept.accept_html and accept["text/html"] > accept["text/plain"]


def page_response() -> TrioResponse:
    return _static("index.html", "text/html; charset=utf-8")


def register_dashboard(app: QuartTrio) -> None:
    """Add `GET /dashboard` (the page) and `GET /dashboard/<asset>`; `GET /` serves the
    page to browsers through Ollama's route (`exo/api/ollama.py`)."""

    @app.get(DASHBOARD_PATH)
    async def dashboard() -> TrioResponse:
        return page_response()

    @app.get(DASHBOARD_PATH + "/<name>")
    async def asset(name: str) -> TrioResponse:
        content_type = ASSETS.get(name)
        if content_type is None:
            return http_error_response(NotFound(), f"No dashboard file {name!r}.")
        return _static(name, content_type)


def _static(name: str, content_type: str) -> TrioResponse:
    body = files("exo.api").joinpath("static", name).read_bytes()
    return TrioResponse(body, 200, {"Content-Type": content_type, "Cache-Control": "no-cache"})
