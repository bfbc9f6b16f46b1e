"""What exo sends on the OpenAI routes, checked against OpenAI's own published schemas
(tests/api/published/openai.json, cut from github.com/openai/openai-openapi by
scripts/published_schemas.py): every required field there, of the right type, in every
object and every stream chunk or event. The openai client's models do not catch a missing
required field; these schemas do (a chat message's `refusal` was missing until
2026-12-06, and `response.function_call_arguments.done`'s `name`).

Anthropic publishes no OpenAPI document; its SDK's types are generated from its own, so
the Messages route is checked against them, in pydantic's strict mode."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import trio
from anthropic.types import Message, RawMessageStreamEvent
from jsonschema import Draft202012Validator

from exo.api.backend import GenerationFailed
from exo.engine.protocol import TokenOut

from .fakes import MODEL, FakeBackend, Raise, Step, tokens
from .helpers import running, sse_data, typed_events

PUBLISHED = Path(__file__).parent / "published" / "openai.json"
USER = [{"role": "user", "content": "Weather in Paris?"}]
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}
CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "parameters": PARAMETERS}


@cache
def components() -> dict[str, Any]:
    return json.loads(PUBLISHED.read_text())["components"]


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": components()}
    )


def event_schema(event_type: str) -> str:
    """The member of `ResponseStreamEvent` for events of `event_type` (so a failure says
    what is wrong with that event, not that it matches none of 50)."""
    schemas = components()["schemas"]
    for member in schemas["ResponseStreamEvent"]["anyOf"]:
        name = member["$ref"].rsplit("/", 1)[-1]
        if event_type in schemas[name]["properties"]["type"].get("enum", ()):
            return name
    raise AssertionError(f"no published event of type {event_type!r}")


def assert_conforms(instance: Any, name: str) -> None:
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    said = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    assert not said, f"{name}: {said[:5]}"


async def exchange(
    method: str, path: str, body: Any = None, *steps_text: str, script: list[Step] | None = None
) -> httpx.Response:
    if script is None:
        script = tokens(*steps_text) if steps_text else tokens("Hel", "lo")
    backend = FakeBackend(script)
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            return await http.request(method, path, json=body)


@pytest.mark.parametrize("text", [("Hel", "lo"), ("Let me check. ", CALL)], ids=["text", "call"])
async def test_chat_completions_match_openais_schema(text: tuple[str, ...]) -> None:
    body = {"model": MODEL, "messages": USER, "tools": [CHAT_TOOL], "logprobs": True}
    whole = await exchange("POST", "/v1/chat/completions", body, *text)
    assert whole.status_code == 200, whole.text
    assert_conforms(whole.json(), "CreateChatCompletionResponse")
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse_data((await exchange("POST", "/v1/chat/completions", streamed, *text)).text)
    assert chunks.pop() == "[DONE]" and len(chunks) >= 3
    for chunk in chunks:
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")


async def test_text_completions_match_openais_schema() -> None:
    body = {"model": MODEL, "prompt": "Once upon", "logprobs": 2}
    whole = await exchange("POST", "/v1/completions", body)
    assert_conforms(whole.json(), "CreateCompletionResponse")
    chunks = sse_data((await exchange("POST", "/v1/completions", {**body, "stream": True})).text)
    assert chunks.pop() == "[DONE]"
    # The document has no chunk schema of its own here: a chunk is a response whose
    # `finish_reason` is null until the last (as OpenAI streams it), which it cannot say.
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert_conforms(chunks[-1], "CreateCompletionResponse")


async def test_models_match_openais_schema() -> None:
    assert_conforms((await exchange("GET", "/v1/models")).json(), "ListModelsResponse")
    assert_conforms((await exchange("GET", f"/v1/models/{MODEL}")).json(), "Model")


RESPONSES_SCRIPTS = {
    "text": tokens("Hel", "lo"),
    "call": tokens("Let me check. ", CALL),
    "cut short": tokens("Hel", "lo", finish="length"),
    "failed": [TokenOut("r", "Hel", 0), Raise(GenerationFailed("the runner died"))],
}


@pytest.mark.parametrize("script", RESPONSES_SCRIPTS.values(), ids=RESPONSES_SCRIPTS.keys())
async def test_responses_match_openais_schema(script: list[Step]) -> None:
    """Every event a Responses stream can send, its end (`response.completed`,
    `.incomplete`, or `error` and `response.failed`) included."""
    body = {"model": MODEL, "input": USER, "tools": [RESPONSES_TOOL]}
    whole = await exchange("POST", "/v1/responses", body, script=script)
    if whole.status_code != 503:  # a failed generation is an error, not a response
        assert whole.status_code == 200, whole.text
        assert_conforms(whole.json(), "Response")
    streamed = {**body, "stream": True}
    events = typed_events((await exchange("POST", "/v1/responses", streamed, script=script)).text)
    assert len(events) >= 5
    for event in events:
        assert_conforms(event, event_schema(event["type"]))


ANTHROPIC_TOOL = {"name": "get_weather", "input_schema": PARAMETERS}


@pytest.mark.parametrize("text", [("Hel", "lo"), ("Let me check. ", CALL)], ids=["text", "call"])
async def test_anthropic_messages_match_its_sdks_types(text: tuple[str, ...]) -> None:
    body = {"model": MODEL, "max_tokens": 16, "messages": USER, "tools": [ANTHROPIC_TOOL]}
    whole = await exchange("POST", "/v1/messages", body, *text)
    assert whole.status_code == 200, whole.text
    Message.model_validate(whole.json(), strict=True)
    streamed = (await exchange("POST", "/v1/messages", {**body, "stream": True}, *text)).text
    events = [json.loads(block.split("data: ", 1)[1]) for block in streamed.split("\n\n") if block]
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)
    # `ping` keeps proxies from closing a quiet stream; the SDK skips it, so has no type.
    assert [e for e in events if e["type"] == "ping"] == [{"type": "ping"}]
    kinds = [adapter.validate_python(e, strict=True).type for e in events if e["type"] != "ping"]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
