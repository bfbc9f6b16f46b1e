"""`GET /openapi.json`: an OpenAPI 3.1 description of every route, built once.

Each route lists the statuses it can answer, every error in its dialect's shape (OpenAI's
everywhere but under `/v1/messages`, Anthropic's, and `/api/` and `/ollama`, Ollama's).
Every body, response and error schema is that of a typed model, the one a route checks
or an encoder builds, in every dialect and on the admin routes (`exo.api.openapi_schemas`
lists them, with the stream wrappers and parameters no model gives), so the document
cannot drift from what is checked and sent. tests/api/test_openapi.py checks that the
paths and methods here are exactly those the app serves, and tests/api/test_fuzz.py
fuzzes the server from this document, validating each answer against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib.metadata import version
from typing import Any

from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api import admin_response as admin
from exo.api import ollama_response as ollama_out
from exo.api import openapi_schemas as s
from exo.api.anthropic_request import (
    MESSAGES_PATH,
    AnthropicMessagesRequest,
    AnthropicTokenCountRequest,
)
from exo.api.anthropic_response import (
    AnthropicMessage,
    AnthropicTokenCount,
)
from exo.api.dashboard import ASSETS
from exo.api.downloads import DownloadTarget
from exo.api.errors import JSON_CONTENT_TYPE, json_response
from exo.api.instances import PlaceRequest
from exo.api.models import LocalModel
from exo.api.ollama import NDJSON_CONTENT_TYPE, PREFIXES
from exo.api.ollama_request import OllamaChatRequest, OllamaGenerateRequest, OllamaShowRequest
from exo.api.openai_request import ChatCompletionRequest, CompletionRequest
from exo.api.openai_response import (
    ChatCompletion,
    ChatCompletionChunk,
    Model,
    ModelList,
    TextCompletion,
)
from exo.api.openapi_keys import SECURITY_SCHEMES, with_keys
from exo.api.openapi_schemas import ERROR_SHAPES, TYPED, TYPED_COMPONENTS
from exo.api.responses_request import ResponseRequest
from exo.api.responses_response import Response

Schema = dict[str, Any]

OPENAPI_PATH = "/openapi.json"
SSE = "text/event-stream"

_STATUS_TEXT = {
    400: "Invalid request: malformed JSON, invalid UTF-8, JSON nested over 512 levels, a field "
    "of the wrong type or out of range, an unsupported feature",
    403: "A gated or private hub repo, and no token the hub accepts (set HF_TOKEN)",
    404: "Unknown model, instance or route",
    405: "Wrong method for this path; the `Allow` header lists the right ones",
    408: "The request body was not received in time",
    413: "The request body is over 4 MiB",
    503: "The model could not be made ready in time, or its runner failed",
}
# Errors of any route (a wrong method; a body, even where none is expected, is received
# whole first), of routes that read a JSON body, and of those that run a generation.
ANY_ROUTE = (405, 408, 413)
BODY = (400, *ANY_ROUTE)
GENERATION = (*BODY, 403, 404, 503)


def errors(dialect: str, statuses: Iterable[int]) -> dict[str, Schema]:
    """The responses for `statuses`, in the error shape of `dialect`."""
    shape = TYPED[ERROR_SHAPES[dialect]]
    return {
        str(status): {
            "description": _STATUS_TEXT[status],
            "content": {JSON_CONTENT_TYPE: {"schema": shape}},
        }
        for status in sorted(set(statuses))
    }


def ok(
    schema: Schema, status: int = 200, stream: tuple[str, Schema] | None = None
) -> dict[str, Schema]:
    """A success: JSON that `schema` accepts, or where the request asks for a `stream`,
    that stream's media type and schema."""
    content = {JSON_CONTENT_TYPE: {"schema": schema}}
    if stream is not None:
        media, stream_schema = stream
        content[media] = {"schema": stream_schema}
    return {str(status): {"description": "OK", "content": content}}


def op(
    summary: str,
    tag: str,
    answers: dict[str, Schema],
    *,
    body: Schema | None = None,
    parameters: Iterable[Schema] = (),
) -> Schema:
    """One operation: what it does, its responses, its JSON body and parameters."""
    operation: Schema = {"summary": summary, "tags": [tag], "responses": answers}
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON_CONTENT_TYPE: {"schema": body}},
        }
    if parameters:
        operation["parameters"] = list(parameters)
    return operation


def path_param(name: str, schema: Schema = s.NON_EMPTY) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def admin_paths() -> dict[str, Schema]:
    def plain(summary: str, schema: Schema, tag: str = "admin") -> Schema:
        return {"get": op(summary, tag, ok(schema) | errors("OpenAI", ANY_ROUTE))}

    instance_id = [path_param("instance_id")]
    preview_query = [
        {"name": "model", "in": "query", "required": True, "schema": s.MODEL_ID},
        {
            "name": "context_length",
            "in": "query",
            "required": False,
            "schema": s.integer(1, 999_999_999),
        },
    ]
    return {
        OPENAPI_PATH: plain("This document", s.ANY_OBJECT),
        "/healthz": plain(
            "Liveness: the API is up (a model may still be loading)", TYPED[admin.Health]
        ),
        "/state": plain("This node's view of the replicated cluster state", TYPED[admin.StateView]),
        "/events": {
            "get": op(
                "Server-sent events: a snapshot of the state (as /state), then each replicated "
                "event as it is applied (id: its index); resume with ?from=N or Last-Event-ID. "
                "?view=sections sends the state in sections instead, all at first, then those "
                "that changed (what the dashboard reads)",
                "admin",
                {
                    "200": {
                        "description": "OK",
                        # Each event's data: the state view (snapshot) or an event.
                        "content": {SSE: {"schema": s.ANY_OBJECT}},
                    }
                }
                | errors("OpenAI", (*ANY_ROUTE, 400)),
                parameters=[
                    {
                        "name": "from",
                        "in": "query",
                        "required": False,
                        "schema": s.integer(0, 2**53),
                    },
                    {
                        "name": "view",
                        "in": "query",
                        "required": False,
                        "schema": s.enum("events", "sections"),
                    },
                ],
            )
        },
        "/dashboard": {
            "get": op(
                "The web dashboard (docs/operations.md)",
                "admin",
                {"200": {"description": "OK", "content": {"text/html": {"schema": s.STRING}}}}
                | errors("OpenAI", ANY_ROUTE),
            )
        },
        "/dashboard/{name}": {
            "get": op(
                "The dashboard's script and stylesheet",
                "admin",
                {
                    "200": {
                        "description": "OK",
                        "content": {
                            kind.split(";")[0]: {"schema": s.STRING} for kind in ASSETS.values()
                        },
                    }
                }
                | errors("OpenAI", (*ANY_ROUTE, 404)),
                parameters=[path_param("name", s.enum(*ASSETS))],
            )
        },
        "/metrics": {
            "get": op(
                "This node's metrics in the Prometheus text format (docs/api.md lists them)",
                "admin",
                {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                }
                | errors("OpenAI", ANY_ROUTE),
            )
        },
        "/instances": {
            **plain("Every instance", TYPED[admin.Instances], "instances"),
            "post": op(
                "Place an instance of a model",
                "instances",
                ok(TYPED[admin.InstanceView], 201) | errors("OpenAI", GENERATION),
                body=TYPED[PlaceRequest],
            ),
        },
        "/downloads": {
            **plain(
                "Every node's download of every model it holds or fetches",
                TYPED[admin.Downloads],
                "models",
            ),
            "post": op(
                "Fetch a whole model onto a node (default: this one); again after a failure "
                "or a stop, it continues from the bytes on disk",
                "models",
                ok(TYPED[admin.DownloadEntry], 202) | errors("OpenAI", GENERATION),
                body=TYPED[DownloadTarget],
            ),
            "delete": op(
                "Stop fetching a model on a node (default: this one), placed there or not; "
                "its bytes so far stay for the next start",
                "models",
                ok(TYPED[admin.DownloadEntry]) | errors("OpenAI", GENERATION),
                parameters=[
                    {"name": "model", "in": "query", "required": True, "schema": s.MODEL_ID},
                    {"name": "node", "in": "query", "required": False, "schema": s.NON_EMPTY},
                ],
            ),
        },
        "/instances/previews": {
            "get": op(
                "Every candidate placement of a model, with its predicted speed",
                "instances",
                ok(TYPED[list[admin.PlacementPreview]]) | errors("OpenAI", (400, 404, *ANY_ROUTE)),
                parameters=preview_query,
            )
        },
        "/models": {
            **plain(
                "Every model the cluster knows, with each node's download of it",
                TYPED[admin.ModelViews],
                "models",
            ),
            "post": op(
                "Serve a model directory on this node (MLX or Hugging Face layout) under a name",
                "models",
                ok(TYPED[admin.ModelView], 201) | errors("OpenAI", (*BODY, 503)),
                body=TYPED[LocalModel],
            ),
        },
        "/models/{model}": {
            "get": op(
                "One model; a hub repo id (owner/name[@revision]) reads its card from the hub",
                "models",
                ok(TYPED[admin.ModelView]) | errors("OpenAI", (400, 403, 404, 503, *ANY_ROUTE)),
                parameters=[path_param("model")],
            )
        },
        "/instances/{instance_id}": {
            "get": op(
                "One instance",
                "instances",
                ok(TYPED[admin.InstanceView]) | errors("OpenAI", (404, *ANY_ROUTE)),
                parameters=instance_id,
            ),
            "delete": op(
                "Delete an instance; its runners stop",
                "instances",
                ok(TYPED[admin.DeletedInstance]) | errors("OpenAI", (404, 503, *ANY_ROUTE)),
                parameters=instance_id,
            ),
        },
    }


def openai_paths() -> dict[str, Schema]:
    def generation(summary: str, answer: Any, request: Any, events: Schema) -> Schema:
        answers = ok(TYPED[answer], stream=(SSE, events)) | errors("OpenAI", GENERATION)
        return {"post": op(summary, "openai", answers, body=TYPED[request])}

    stored = errors("OpenAI", (404, *ANY_ROUTE))
    response_id = [path_param("response_id")]
    return {
        "/v1/models": {
            "get": op(
                "List the models", "openai", ok(TYPED[ModelList]) | errors("OpenAI", ANY_ROUTE)
            )
        },
        "/v1/models/{model_id}": {
            "get": op(
                "One model",
                "openai",
                ok(TYPED[Model]) | errors("OpenAI", (404, *ANY_ROUTE)),
                parameters=[path_param("model_id", s.MODEL_ID)],
            )
        },
        "/v1/chat/completions": generation(
            "Chat completion, streamed or not",
            ChatCompletion,
            ChatCompletionRequest,
            s.openai_stream(ChatCompletionChunk),
        ),
        "/v1/completions": generation(
            "Legacy text completion of a raw prompt (no chat template)",
            TextCompletion,
            CompletionRequest,
            s.openai_stream(TextCompletion),
        ),
        "/v1/responses": generation(
            "Responses API (text and function tools), streamed or not; nothing is stored",
            Response,
            ResponseRequest,
            s.responses_stream(),
        ),
        "/v1/responses/{response_id}": {
            method: op(
                f"{what} a stored response: 404, none are stored",
                "openai",
                stored,
                parameters=response_id,
            )
            for method, what in (("get", "Retrieve"), ("post", "Cancel"), ("delete", "Delete"))
        },
    }


def anthropic_paths() -> dict[str, Schema]:
    failures = errors("Anthropic", GENERATION)
    return {
        MESSAGES_PATH: {
            "post": op(
                "Anthropic Messages, streamed or not",
                "anthropic",
                ok(TYPED[AnthropicMessage], stream=(SSE, s.anthropic_stream())) | failures,
                body=TYPED[AnthropicMessagesRequest],
            )
        },
        f"{MESSAGES_PATH}/count_tokens": {
            "post": op(
                "The prompt's tokens, as the model's template renders it",
                "anthropic",
                ok(TYPED[AnthropicTokenCount]) | failures,
                body=TYPED[AnthropicTokenCountRequest],
            )
        },
    }


def ollama_paths(prefix: str) -> dict[str, Schema]:
    """The Ollama routes under `prefix`; errors there are in Ollama's shape, except at
    `/` itself, which is not an Ollama path."""

    def listing(summary: str, schema: Schema) -> Schema:
        return {"get": op(summary, "ollama", ok(schema) | errors("Ollama", ANY_ROUTE))}

    def generation(summary: str, reply: type, body: type) -> Schema:
        stream = (NDJSON_CONTENT_TYPE, s.ollama_stream(reply))
        answers = ok(TYPED[reply], stream=stream) | errors("Ollama", GENERATION)
        return {"post": op(summary, "ollama", answers, body=TYPED[body])}

    content: Schema = {"text/plain": {"schema": s.STRING}}
    if not prefix:  # a browser (preferring HTML) gets the dashboard here
        content["text/html"] = {"schema": s.STRING}
    running = {"200": {"description": "Ollama is running", "content": content}}
    alive = op(
        "Liveness, as Ollama answers it; the web dashboard for a browser"
        if not prefix
        else "Liveness, as Ollama answers it",
        "ollama",
        running | errors("Ollama" if prefix else "OpenAI", ANY_ROUTE),
    )
    return {
        f"{prefix}/api/chat": generation(
            "Ollama chat", ollama_out.OllamaChatReply, OllamaChatRequest
        ),
        f"{prefix}/api/generate": generation(
            "Ollama generate", ollama_out.OllamaGenerateReply, OllamaGenerateRequest
        ),
        f"{prefix}/api/tags": listing("Every model", TYPED[ollama_out.OllamaModels]),
        f"{prefix}/api/show": {
            "post": op(
                "One model's details",
                "ollama",
                ok(TYPED[ollama_out.OllamaShowReply]) | errors("Ollama", (*BODY, 404)),
                body=TYPED[OllamaShowRequest],
            )
        },
        f"{prefix}/api/ps": listing(
            "Models with a ready instance", TYPED[ollama_out.OllamaRunningModels]
        ),
        f"{prefix}/api/version": listing(
            "The Ollama API version exo follows", TYPED[ollama_out.OllamaVersion]
        ),
        f"{prefix}/": {"get": alive, "head": alive},
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document; built on first use, then shared (never mutate it)."""
    paths = admin_paths() | openai_paths() | anthropic_paths()
    for prefix in PREFIXES:
        paths |= ollama_paths(prefix)
    schemas = TYPED_COMPONENTS
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "exo",
            "version": version("exo"),
            "description": "OpenAI-, Anthropic- and Ollama-compatible APIs over an exo "
            "cluster, and its admin routes. docs/api.md has the details.",
        },
        "paths": with_keys(paths),
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def register_openapi(app: QuartTrio) -> None:
    """Add `GET /openapi.json`."""

    @app.get(OPENAPI_PATH)
    async def openapi_json() -> TrioResponse:
        return json_response(openapi_document())
