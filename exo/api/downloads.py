"""`/downloads`: every node's model downloads, and starting or stopping one. The same
routes drive the dashboard's Start and Stop buttons."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.admin_response import Downloads
from exo.api.backend import Backend
from exo.api.errors import answer_json
from exo.api.typed_body import ModelName, convert_body
from exo.api.validation import decode_json_body


class DownloadTarget(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A model and the node to fetch all of it onto (default: this one); a `POST
    /downloads` body, or the query of `DELETE /downloads`."""

    model: ModelName
    node: Annotated[str, Meta(min_length=1, description="A node id (GET /state).")] | None = None


def parse_download_target(fields: object) -> tuple[str, str | None]:
    """(model, node or None) from a JSON body or the query; raises InvalidRequest."""
    target = convert_body(fields, DownloadTarget)
    return target.model, target.node


def register_downloads(app: QuartTrio, backend: Backend) -> None:
    """Add `GET /downloads`, `POST /downloads` (fetch a whole model onto a node) and
    `DELETE /downloads?model=M&node=N` (stop fetching it there)."""

    @app.get("/downloads")
    async def list_downloads() -> TrioResponse:
        async def work() -> Any:
            return Downloads(backend.downloads())

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
