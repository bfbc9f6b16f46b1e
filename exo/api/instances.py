"""`/instances`: place, list, inspect and delete model instances, and preview where a
model could go. Errors use the same JSON error shape as the rest of the API."""

from __future__ import annotations

from typing import Any

from attrs import frozen
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend, InvalidRequest
from exo.api.errors import answer_json
from exo.api.validation import decode_json_body

STRATEGIES = ("pipeline", "tensor")


@frozen
class PlaceRequest:
    model: str
    strategy: str
    nodes: tuple[str, ...] | None
    min_nodes: int
    context_length: int | None = None


def parse_place_request(body: object) -> PlaceRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    unknown = sorted(set(body) - {"model", "strategy", "nodes", "min_nodes", "context_length"})
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0]}'.", unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string.", "model")
    strategy = body.get("strategy", "pipeline")
    if strategy not in STRATEGIES:
        raise InvalidRequest("'strategy' must be 'pipeline' or 'tensor'.", "strategy")
    nodes = body.get("nodes")
    if nodes is not None and (
        not isinstance(nodes, list)
        or not nodes
        or not all(isinstance(n, str) and n for n in nodes)
        or len(set(nodes)) != len(nodes)
    ):
        raise InvalidRequest("'nodes' must be a non-empty list of distinct node ids.", "nodes")
    min_nodes = body.get("min_nodes", len(nodes) if nodes else 1)
    if type(min_nodes) is not int or min_nodes < 1:
        raise InvalidRequest("'min_nodes' must be an integer of at least 1.", "min_nodes")
    context_length = body.get("context_length")
    if context_length is not None and (type(context_length) is not int or context_length < 1):
        raise InvalidRequest(
            "'context_length' must be an integer of at least 1 (tokens).", "context_length"
        )
    return PlaceRequest(model, strategy, tuple(nodes) if nodes else None, min_nodes, context_length)


def register_instances(app: QuartTrio, backend: Backend) -> None:
    """Add `POST/GET /instances`, `GET/DELETE /instances/<id>`, `GET /instances/previews`."""

    @app.post("/instances")
    async def create_instance() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)

        async def work() -> Any:
            place = parse_place_request(decode_json_body(raw))
            return await backend.create_instance(
                place.model, place.strategy, place.nodes, place.min_nodes, place.context_length
            )

        return await answer_json(work, 201)

    @app.get("/instances")
    async def list_instances() -> TrioResponse:
        async def work() -> Any:
            return {"instances": backend.instances()}

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
            return {"id": instance_id, "deleted": True}

        return await answer_json(work)
