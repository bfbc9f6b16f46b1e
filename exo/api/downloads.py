"""`/downloads`: every node's model downloads, and starting or stopping one. The same
routes drive the dashboard's Start and Stop buttons."""

from __future__ import annotations

from typing import Any

from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend, InvalidRequest
from exo.api.errors import answer_json
from exo.api.validation import decode_json_body


def parse_download_target(fields: object) -> tuple[str, str | None]:
    """(model, node or None) from a JSON body or the query; raises InvalidRequest."""
    if not isinstance(fields, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    unknown = sorted(set(fields) - {"model", "node"})
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0]}'.", unknown[0])
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string.", "model")
    node = fields.get("node")
    if node is not None and (not isinstance(node, str) or not node):
        raise InvalidRequest("'node' must be a node id (GET /state lists them).", "node")
    return model, node


def register_downloads(app: QuartTrio, backend: Backend) -> None:
    """Add `GET /downloads`, `POST /downloads` (fetch a whole model onto a node) and
    `DELETE /downloads?model=M&node=N` (stop fetching it there)."""

    @app.get("/downloads")
    async def list_downloads() -> TrioResponse:
        async def work() -> Any:
            return {"downloads": backend.downloads()}

        return await answer_json(work)

    @app.post("/downloads")
    async def start_download() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)

        async def work() -> Any:
            model, node = parse_download_target(decode_json_body(raw))
            return await backend.order_download(model, node, "fetch")

        return await answer_json(work, 202)

    @app.delete("/downloads")
    async def stop_download() -> TrioResponse:
        async def work() -> Any:
            model, node = parse_download_target(dict(request.args))
            return await backend.order_download(model, node, "stop")

        return await answer_json(work)
