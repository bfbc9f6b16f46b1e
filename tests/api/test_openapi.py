"""`/openapi.json` lists exactly the routes and methods the app serves, and is what it serves."""

from __future__ import annotations

import re
from typing import get_args

import httpx
import trio

from exo.api.app import create_app
from exo.api.openapi import openapi_document
from exo.api.responses_response import ResponseStreamEvent

from .fakes import FakeBackend
from .helpers import running

# Methods werkzeug adds to every rule by itself: HEAD wherever there is GET, and OPTIONS.
AUTOMATIC = {"HEAD", "OPTIONS"}
OPERATIONS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def served_routes() -> dict[str, set[str]]:
    """Every path the app routes (`<x>` and `<path:x>` written `{x}`) and its methods,
    less those werkzeug adds by itself."""
    routes: dict[str, set[str]] = {}
    for rule in create_app(FakeBackend()).url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?(\w+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update((rule.methods or set()) - AUTOMATIC)
    return routes


def documented_routes() -> dict[str, set[str]]:
    paths = openapi_document()["paths"]
    return {path: {m.upper() for m in item if m in OPERATIONS} for path, item in paths.items()}


def test_every_served_route_is_documented_and_nothing_else() -> None:
    documented = documented_routes()
    # HEAD is documented where a client relies on it (Ollama's liveness check), and
    # served on every GET route.
    assert {p: m - {"HEAD"} for p, m in documented.items()} == served_routes()
    assert all("GET" in m for m in documented.values() if "HEAD" in m)


def test_every_operation_has_a_summary_success_and_errors() -> None:
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert operation["summary"], where
            statuses = set(operation["responses"])
            # Stored responses always answer 404: exo stores none.
            assert statuses & {"200", "201", "202"} or path == "/v1/responses/{response_id}", where
            assert "405" in statuses, where
            if "requestBody" in operation:
                assert {"400", "413"} <= statuses, where


async def test_the_document_is_served() -> None:
    with trio.fail_after(10):
        async with running(FakeBackend()) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1")


def test_openai_response_schemas_come_from_the_models_the_encoders_build() -> None:
    """`refusal` is always sent (OpenAI requires it), `usage` in a stream chunk only when
    asked for, `tool_calls` only when there are calls: the typed models say so, and the
    document is derived from them."""
    schemas = openapi_document()["components"]["schemas"]
    assert "refusal" in schemas["AssistantMessage"]["required"]
    assert "tool_calls" not in schemas["AssistantMessage"]["required"]
    assert "usage" not in schemas["ChatCompletionChunk"]["required"]
    assert "usage" in schemas["ChatCompletion"]["required"]
    assert schemas["ChatCompletion"]["properties"]["object"] == {"enum": ["chat.completion"]}


def test_the_anthropic_stream_schema_is_the_union_of_its_typed_events() -> None:
    """Each event of a streamed Messages reply is a typed model tagged by `type`; the
    document lists exactly those (before, any object with a `type`)."""
    document = openapi_document()
    schemas = document["components"]["schemas"]
    stream = document["paths"]["/v1/messages"]["post"]["responses"]["200"]["content"]
    data = stream["text/event-stream"]["schema"]["properties"]["data"]
    events = data["contentSchema"]["anyOf"][0]
    tags = set(events["discriminator"]["mapping"])
    assert tags == {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
    }
    assert schemas["AnthropicMessage"]["properties"]["type"] == {"enum": ["message"]}


def test_the_responses_stream_schema_is_the_union_of_its_typed_events() -> None:
    """Each event of a streamed Responses reply is a typed model tagged by `type`, with a
    `sequence_number` (before, any object with those two fields); a call's arguments end
    with the function's name, which OpenAI's schema requires."""
    document = openapi_document()
    schemas = document["components"]["schemas"]
    stream = document["paths"]["/v1/responses"]["post"]["responses"]["200"]["content"]
    events = stream["text/event-stream"]["schema"]["properties"]["data"]["contentSchema"]
    tags = {event.__struct_config__.tag for event in get_args(ResponseStreamEvent)}
    assert set(events["discriminator"]["mapping"]) == tags
    assert {"error", "response.failed", "response.function_call_arguments.done"} <= tags
    done = schemas["ResponseFunctionCallArgumentsDoneEvent"]
    assert {"sequence_number", "name", "arguments"} <= set(done["required"])
    assert "usage" not in schemas["Response"]["required"]
    items = schemas["Response"]["properties"]["output"]["items"]
    assert set(items["discriminator"]["mapping"]) == {"message", "function_call"}


def test_every_component_has_its_own_name() -> None:
    """Two models of one name would be published under module paths
    (`exo.api.x.Name`): each response or request model needs a name of its own."""
    assert not [name for name in openapi_document()["components"]["schemas"] if "." in name]


def test_ollama_response_schemas_come_from_the_models_the_encoders_build() -> None:
    """A chat reply's text is its `message`, a generation's its `response` (one model,
    each kind naming the field); statistics only on the last line; a model's `details`
    are typed (before, any value)."""
    document = openapi_document()
    schemas = document["components"]["schemas"]
    chat, generate = schemas["OllamaChatReply"], schemas["OllamaGenerateReply"]
    assert set(chat["required"]) == {"model", "created_at", "message", "done"}
    assert set(generate["required"]) == {"model", "created_at", "response", "done"}
    assert "eval_count" in chat["properties"] and "reply" not in chat["properties"]
    assert {"expires_at", "size_vram"} <= set(schemas["OllamaRunningModel"]["required"])
    assert "expires_at" not in schemas["OllamaModel"]["properties"]
    assert schemas["OllamaModel"]["properties"]["details"] == {
        "$ref": "#/components/schemas/OllamaDetails"
    }
    stream = document["paths"]["/api/chat"]["post"]["responses"]["200"]["content"]
    line = stream["application/x-ndjson"]["schema"]["items"]
    assert line["anyOf"][0] == {"$ref": "#/components/schemas/OllamaChatReply"}


def test_each_dialects_errors_are_the_typed_model_its_encoder_builds() -> None:
    """The error shapes are typed models too: OpenAI's nests `error`, Anthropic's is tagged
    `type: error`, Ollama's is one string."""
    schemas = openapi_document()["components"]["schemas"]
    detail = schemas["OpenAIErrorDetail"]
    assert detail["required"] == ["message", "type", "param", "code"]
    assert schemas["AnthropicError"]["properties"]["type"] == {"enum": ["error"]}
    assert schemas["OllamaError"]["properties"] == {"error": {"type": "string"}}
    chat = openapi_document()["paths"]["/api/chat"]["post"]["responses"]["404"]
    assert chat["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OllamaError"
    }


def test_admin_response_schemas_come_from_the_models_the_node_builds() -> None:
    """The admin routes' answers are typed models the node builds (before, hand-kept
    schemas with untyped fields): an instance's status is one of five, a download
    with only an order has no progress fields, an alias has no instances."""
    document = openapi_document()
    schemas = document["components"]["schemas"]
    status = schemas["InstanceView"]["properties"]["status"]
    assert set(status["enum"]) == {"placing", "downloading", "loading", "ready", "failed"}
    assert set(schemas["DownloadEntry"]["required"]) == {
        "node",
        "model",
        "phase",
        "eta_seconds",
        "order",
    }
    assert set(schemas["ModelView"]["required"]) == {"id", "card", "downloads"}
    assert schemas["PlacementPreview"]["properties"]["shards"]["items"] == {
        "$ref": "#/components/schemas/ShardView"
    }
    previews = document["paths"]["/instances/previews"]["get"]["responses"]["200"]
    assert previews["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/PlacementPreview"},
    }
