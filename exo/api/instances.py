"""`/instances`: place, list, inspect and delete model instances, and preview where a
model could go. Errors use the same JSON error shape as the rest of the API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.admin_response import DeletedInstance, Instances
from exo.api.backend import Backend, InvalidRequest
from exo.api.errors import answer_json
from exo.api.typed_body import ModelName, NonEmpty, convert_body
from exo.api.validation import decode_json_body

STRATEGIES = ("pipeline", "tensor")


class PlaceRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A `POST /instances` body."""

    model: ModelName
    strategy: Literal["pipeline", "tensor"] = "pipeline"
    nodes: (
        Annotated[
            list[NonEmpty],
            Meta(
                min_length=1,
                description="Distinct node ids.",
                extra_json_schema={"uniqueItems": True},
            ),
        ]
        | None
    ) = None
    min_nodes: Annotated[int, Meta(ge=1, description="Default: len(nodes), or 1.")] | None = None
    context_length: Annotated[int, Meta(ge=1, description="Tokens.")] | None = None

    def __post_init__(self) -> None:
        if self.nodes is not None and len(set(self.nodes)) != len(self.nodes):
            raise ValueError("`nodes`: must be a list of distinct node ids")
        if self.min_nodes is None:
            self.min_nodes = len(self.nodes) if self.nodes else 1


def parse_place_request(body: object) -> PlaceRequest:
    return convert_body(body, PlaceRequest)


def register_instances(app: QuartTrio, backend: Backend) -> None:
    """Add `POST/GET /instances`, `GET/DELETE /instances/<id>`, `GET /instances/previews`."""

    @app.post("/instances")
    async def create_instance() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)

        async def work() -> Any:
            place = parse_place_request(decode_json_body(raw))
            return await backend.create_instance(
                place.model,
                place.strategy,
                tuple(place.nodes) if place.nodes else None,
                place.min_nodes or 1,
                place.context_length,
            )

        return await answer_json(work, 201)

    @app.get("/instances")
    async def list_instances() -> TrioResponse:
        async def work() -> Any:
            return Instances(backend.instances())

        return await answer_json(work)

    @app.get("/instances/previews")
    async def instance_previews() -> TrioResponse:
        model = request.args.get("model")
        context = request.args.get("context_length")

        async def work() -> Any:
            if not model:
                raise InvalidRequest("Give the model to preview: ?model=<id>.", "model")
            # ASCII digits, at most 9 (a billion tokens): `int` refuses '²', which `isdigit`
            # passes, and numbers of over 4300 digits.
            if context is not None and not (
                context.isascii() and context.isdigit() and len(context) <= 9 and int(context) > 0
            ):
                raise InvalidRequest(
                    "'context_length' must be an integer of at least 1 (tokens).",
                    "context_length",
                )
            return await backend.previews(model, int(context) if context else None)

        return await answer_json(work)

    @app.get("/instances/<instance_id>")
    async def get_instance(instance_id: str) -> TrioResponse:
        async def work() -> Any:
            return backend.instance(instance_id)

        return await answer_json(work)

    @app.delete("/instances/<instance_id>")
    async def delete_instance(instance_id: str) -> TrioResponse:
        async def work() -> Any:
            await backend.delete_instance(instance_id)
            return DeletedInstance(instance_id, True)

        return await answer_json(work)
