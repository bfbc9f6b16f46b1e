"""`GET /models` and `GET /models/<id>`: every model the cluster knows (bundled, added
from the hub, catalogue aliases), with its card and each node's download of it."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, to_builtins
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.admin_response import ModelViews
from exo.api.backend import Backend, BackendError, lookup_model
from exo.api.errors import backend_error_response, json_response
from exo.api.typed_body import convert_body
from exo.api.validation import decode_json_body

# Names a local model may take: what a client can put in "model" without surprises.
MAX_NAME = 128


class LocalModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A `POST /models` body: a model directory on the nodes, and the name to serve it under."""

    model: Annotated[
        str,
        Meta(min_length=1, max_length=MAX_NAME, pattern=r"^\S+$", description="No spaces."),
    ]
    path: Annotated[str, Meta(pattern="^/", description="An absolute path to a model directory.")]

    def __post_init__(self) -> None:
        if not self.model.isprintable():
            raise ValueError("`model`: must not contain control characters")


def parse_local_model(body: Any) -> tuple[str, str]:
    """(name, path) of a `POST /models` body `{"model": NAME, "path": DIR}`."""
    local = convert_body(body, LocalModel)
    return local.model, local.path


def view_of(backend: Backend, model_id: str) -> Any:
    """The GET /models entry of one model, as JSON."""
    return to_builtins(next((v for v in backend.model_views() if v.id == model_id), None))


def register_models(app: QuartTrio, backend: Backend) -> None:
    """Add `GET /models`, `GET /models/<id>` (a hub repo id reads the repo's card) and
    `POST /models` (serve a local model directory under a name)."""

    @app.post("/models", endpoint="exo_add_model")
    async def add_model() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            name, path = parse_local_model(decode_json_body(raw))
            card = await backend.add_local_model(name, path)
        except BackendError as error:
            return backend_error_response(error)
        return json_response(view_of(backend, card.model_id), 201)

    @app.get("/models", endpoint="exo_models")
    async def list_models() -> TrioResponse:
        return json_response(to_builtins(ModelViews(backend.model_views())))

    @app.get("/models/<path:model>", endpoint="exo_model")
    async def get_model(model: str) -> TrioResponse:
        found = await lookup_model(backend, model)
        if isinstance(found, BackendError):
            return backend_error_response(found)
        return json_response(view_of(backend, found.model_id))
