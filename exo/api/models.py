"""`GET /models` and `GET /models/<id>`: every model the cluster knows (bundled, added
from the hub, catalogue aliases), with its card and each node's download of it."""

from __future__ import annotations

from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend, BackendError, lookup_model
from exo.api.errors import backend_error_response, json_response


def register_models(app: QuartTrio, backend: Backend) -> None:
    """Add `GET /models` and `GET /models/<id>` (a hub repo id reads the repo's card)."""

    @app.get("/models", endpoint="exo_models")
    async def list_models() -> TrioResponse:
        return json_response({"models": backend.model_views()})

    @app.get("/models/<path:model>", endpoint="exo_model")
    async def get_model(model: str) -> TrioResponse:
        found = await lookup_model(backend, model)
        if isinstance(found, BackendError):
            return backend_error_response(found)
        view = next((v for v in backend.model_views() if v["id"] == found.model_id), None)
        return json_response(view)
