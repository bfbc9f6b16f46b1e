"""`POST /v1/responses` through the official `openai` client (with strict response
validation) and raw HTTP, against the real server over a fake backend."""

from __future__ import annotations

import json
from typing import Any

import httpx
import httpx2
import openai
import pydantic
import pytest
import trio
from openai.types.responses import FunctionToolParam, ResponseInputParam, ResponseStreamEvent

from exo.api.backend import GenerationFailed, InvalidRequest, Unavailable
from exo.engine.protocol import ChatMessage, SamplingParams, TokenOut, Tool, ToolCall

from .fakes import MODEL, FakeBackend, Raise, tokens
from .helpers import assert_error_shape, openai_stream_gc, running, typed_events

RESPONSES = "/v1/responses"
STREAMED = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def client_for(url: str) -> openai.AsyncOpenAI:
    # Without keep-alive connections, nothing is left open when a test's server stops.
    # Strict validation: the client refuses any body that does not match its models.
    return openai.AsyncOpenAI(
        base_url=f"{url}/v1",
        api_key="x",
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(max_keepalive_connections=0)
        ),
        _strict_response_validation=True,
    )


async def test_plain_response() -> None:
    backend = FakeBackend(tokens("Hel", "lo", "!", prompt_tokens=5))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            response = await client.responses.create(
                model=MODEL,
                input="Capital of France?",
                instructions="Be brief.",
                temperature=0,
                top_p=0.5,
                max_output_tokens=16,
                metadata={"case": "plain"},
                store=True,
                reasoning={"effort": "low"},
                truncation="auto",
                user="u1",
            )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.incomplete_details is None
    assert response.output_text == "Hello!"
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.status == "completed" and message.role == "assistant"
    assert response.usage is not None
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (5, 3, 8)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert (response.instructions, response.metadata, response.user) == (
        "Be brief.",
        {"case": "plain"},
        "u1",
    )
    assert (response.temperature, response.top_p, response.max_output_tokens) == (0, 0.5, 16)
    assert response.tools == [] and response.tool_choice == "auto"
    assert response.to_dict()["store"] is False  # exo keeps no responses
    [call] = backend.calls
    assert call.messages == (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Capital of France?"),
    )
    assert call.params == SamplingParams(temperature=0.0, top_p=0.5, max_tokens=16)


async def test_max_output_tokens_reached_is_incomplete() -> None:
    backend = FakeBackend(tokens("a", "b", finish="length"))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            response = await client.responses.create(model=MODEL, input="hi", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    [message] = response.output
    assert message.type == "message" and message.status == "incomplete"
    assert response.output_text == "ab"


async def test_item_list_with_several_turns() -> None:
    backend = FakeBackend(tokens("ok"))
    conversation: ResponseInputParam = [
        {"role": "developer", "content": "Answer in French."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Capital"},
                {"type": "input_text", "text": "of Italy?"},
            ],
        },
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "And France?"},
    ]
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            response = await client.responses.create(model=MODEL, input=conversation)
    assert response.output_text == "ok"
    [call] = backend.calls
    assert call.messages == (
        ChatMessage("system", "Answer in French."),
        ChatMessage("user", "Capital\nof Italy?"),
        ChatMessage("assistant", "Rome."),
        ChatMessage("user", "And France?"),
    )
    assert call.params == SamplingParams()  # OpenAI's defaults: temperature 1, top_p 1


@openai_stream_gc
async def test_streamed_events_in_order() -> None:
    backend = FakeBackend(tokens("Hel", "lo", "!", prompt_tokens=4))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            stream = await client.responses.create(model=MODEL, input="hi", stream=True)
            events = [event async for event in stream]
    assert [e.type for e in events] == STREAMED
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(e.delta for e in deltas) == "Hello!"
    created, completed = events[0], events[-1]
    assert created.type == "response.created" and completed.type == "response.completed"
    assert created.response.status == "in_progress" and created.response.output == []
    assert completed.response.id == created.response.id
    assert completed.response.output_text == "Hello!"
    assert completed.response.usage is not None and completed.response.usage.total_tokens == 7
    item_ids = {getattr(e, "item_id", None) for e in events} - {None}
    assert item_ids == {completed.response.output[0].id}


@openai_stream_gc
async def test_stream_helper_and_final_response() -> None:
    backend = FakeBackend(tokens("Hel", "lo", "!"))
    with trio.fail_after(10):
        async with (
            running(backend) as url,
            client_for(url) as client,
            client.responses.stream(model=MODEL, input="hi") as stream,
        ):
            snapshots = [
                event.snapshot
                async for event in stream
                if event.type == "response.output_text.delta"
            ]
            final = await stream.get_final_response()
    assert snapshots == ["Hel", "Hello", "Hello!"]
    assert final.status == "completed" and final.output_text == "Hello!"


async def test_raw_stream_ending_incomplete() -> None:
    backend = FakeBackend(tokens("a", finish="length"))
    request = {"model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 1}
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.post(RESPONSES, json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = typed_events(response.text)
    adapter: pydantic.TypeAdapter[ResponseStreamEvent] = pydantic.TypeAdapter(ResponseStreamEvent)
    for event in events:
        adapter.validate_python(event)
    assert [e["type"] for e in events][-2:] == ["response.output_item.done", "response.incomplete"]
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["content"][0]["text"] == "a"


async def test_text_formats_become_json_schemas() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    backend = FakeBackend(tokens('{"city": ', '"Paris"}'))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            shaped = await client.responses.create(
                model=MODEL,
                input="Capital of France?",
                text={"format": {"type": "json_schema", "name": "city", "schema": schema}},
            )
            plain_object = await client.responses.create(
                model=MODEL, input="x", text={"format": {"type": "json_object"}}
            )

            class City(pydantic.BaseModel):
                city: str

            parsed = await client.responses.parse(model=MODEL, input="x", text_format=City)
    assert shaped.text is not None and shaped.text.format is not None
    assert shaped.text.format.type == "json_schema"
    assert json.loads(shaped.output_text) == {"city": "Paris"}
    assert parsed.output_parsed == City(city="Paris")
    first, second, third = (call.params.json_schema for call in backend.calls)
    assert first is not None and json.loads(first) == schema
    assert second is not None and json.loads(second) == {"type": "object"}
    assert third is not None and json.loads(third)["properties"] == {
        "city": {"title": "City", "type": "string"}
    }
    assert plain_object.text is not None and plain_object.text.format is not None
    assert plain_object.text.format.type == "json_object"


WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": WEATHER_PARAMETERS,
    "strict": True,
}
TIME: FunctionToolParam = {
    "type": "function",
    "name": "get_time",
    "parameters": None,
    "strict": None,
}
WEATHER_TOOL = Tool("get_weather", "Current weather in a city", json.dumps(WEATHER_PARAMETERS))
TIME_TOOL = Tool("get_time")
# A tagged call split over tokens, the tags themselves included.
TAGGED_CALL = (
    "<tool_",
    'call>{"name": "get_weather", ',
    '"arguments": {"city": "Paris"}}</tool_call>',
)
PARIS = '{"city": "Paris"}'
CALL_STREAMED = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


async def test_tagged_call_becomes_a_function_call_item() -> None:
    backend = FakeBackend(tokens("Let me check.", *TAGGED_CALL))
    call_only = FakeBackend(tokens("\n", *TAGGED_CALL, "\n"))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            response = await client.responses.create(
                model=MODEL, input="Weather in Paris?", tools=[WEATHER, TIME]
            )
        async with running(call_only) as url, client_for(url) as client:
            alone = await client.responses.create(
                model=MODEL, input="Weather in Paris?", tools=[WEATHER], parallel_tool_calls=False
            )
    assert response.status == "completed" and response.output_text == "Let me check."
    message, call = response.output
    assert message.type == "message" and message.status == "completed"
    assert call.type == "function_call" and call.id is not None and call.id.startswith("fc_")
    assert call.call_id.startswith("call_") and call.status == "completed"
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert [t.to_dict() for t in response.tools] == [WEATHER, {**TIME, "description": None}]
    assert response.tool_choice == "auto" and response.parallel_tool_calls is True
    [sent] = backend.calls
    assert sent.tools == (WEATHER_TOOL, TIME_TOOL) and sent.params.json_schema is None
    # Only whitespace besides the call: no message item.
    [only] = alone.output
    assert only.type == "function_call" and only.arguments == PARIS
    assert alone.output_text == "" and alone.parallel_tool_calls is False


@openai_stream_gc
async def test_streamed_call_events_in_order() -> None:
    backend = FakeBackend(tokens("Let me check.", *TAGGED_CALL, "\n"))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            stream = await client.responses.create(
                model=MODEL, input="Weather in Paris?", tools=[WEATHER], stream=True
            )
            events = [event async for event in stream]
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            request = {**HI, "tools": [WEATHER], "stream": True}
            raw = typed_events((await http.post(RESPONSES, json=request)).text)
    assert [e.type for e in events] == [e["type"] for e in raw] == CALL_STREAMED
    adapter: pydantic.TypeAdapter[ResponseStreamEvent] = pydantic.TypeAdapter(ResponseStreamEvent)
    for event in raw:
        adapter.validate_python(event, strict=True)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    indexes = [getattr(e, "output_index", None) for e in events]
    assert indexes == [None, None, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, None]
    added, delta, done, item_done, completed = events[-5:]
    assert added.type == "response.output_item.added" and added.item.type == "function_call"
    assert (added.item.arguments, added.item.status) == ("", "in_progress")
    assert delta.type == "response.function_call_arguments.delta" and delta.delta == PARIS
    assert done.type == "response.function_call_arguments.done" and done.arguments == PARIS
    assert raw[-3]["name"] == "get_weather"  # required by OpenAI's schema
    assert item_done.type == "response.output_item.done"
    assert item_done.item.type == "function_call" and item_done.item.status == "completed"
    assert delta.item_id == done.item_id == added.item.id == item_done.item.id
    assert completed.type == "response.completed"
    message, call = completed.response.output
    assert message.type == "message" and completed.response.output_text == "Let me check."
    assert call.type == "function_call" and call.model_dump() == item_done.item.model_dump()


@openai_stream_gc
async def test_stream_helper_final_response_with_a_call() -> None:
    backend = FakeBackend(tokens("Let me check.", *TAGGED_CALL))
    with trio.fail_after(10):
        async with (
            running(backend) as url,
            client_for(url) as client,
            client.responses.stream(model=MODEL, input="x", tools=[WEATHER]) as stream,
        ):
            snapshots = [
                event.snapshot
                async for event in stream
                if event.type == "response.function_call_arguments.delta"
            ]
            final = await stream.get_final_response()
    assert snapshots == [PARIS]
    assert final.status == "completed" and final.output_text == "Let me check."
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.parsed_arguments == {"city": "Paris"}  # a strict tool's arguments, parsed


async def test_forced_choices_constrain_the_reply() -> None:
    backend = FakeBackend(tokens('{"name": "get_weather", ', '"arguments": {"city": "Paris"}}'))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            named = await client.responses.create(
                model=MODEL,
                input="x",
                tools=[WEATHER, TIME],
                tool_choice={"type": "function", "name": "get_weather"},
            )
            required = await client.responses.create(
                model=MODEL, input="x", tools=[WEATHER, TIME], tool_choice="required"
            )
    [call] = named.output
    assert call.type == "function_call" and call.arguments == PARIS
    assert named.to_dict()["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert [item.type for item in required.output] == ["function_call"]
    assert required.tool_choice == "required"
    first, second = backend.calls
    assert first.tools == (WEATHER_TOOL,)  # a named choice shows the model only that tool
    assert first.params.json_schema is not None
    schema = json.loads(first.params.json_schema)
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == WEATHER_PARAMETERS
    assert second.tools == (WEATHER_TOOL, TIME_TOOL) and second.params.json_schema is not None
    options = json.loads(second.params.json_schema)["anyOf"]
    assert [o["properties"]["name"] for o in options] == [
        {"const": "get_weather"},
        {"const": "get_time"},
    ]


async def test_tool_choice_none_offers_no_tools() -> None:
    backend = FakeBackend(tokens(*TAGGED_CALL))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            response = await client.responses.create(
                model=MODEL, input="x", tools=[WEATHER], tool_choice="none"
            )
    [message] = response.output
    assert message.type == "message" and response.output_text == "".join(TAGGED_CALL)
    assert response.tool_choice == "none" and len(response.tools) == 1
    [sent] = backend.calls
    assert sent.tools == () and sent.params.json_schema is None


async def test_calls_and_outputs_of_earlier_turns_reach_the_backend() -> None:
    backend = FakeBackend(tokens("Sunny in Paris, 9 in Rome."))
    conversation: ResponseInputParam = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking both."},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": PARIS},
        {
            "type": "function_call",
            "call_id": "c2",
            "name": "get_weather",
            "arguments": '{"city": "Rome"}',
            "id": "fc_2",
            "status": "completed",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "9 degrees"}],
        },
        {"type": "function_call", "call_id": "c3", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c3", "output": "noon"},
    ]
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            response = await client.responses.create(
                model=MODEL, input=conversation, tools=[WEATHER, TIME]
            )
    assert response.output_text == "Sunny in Paris, 9 in Rome."
    [sent] = backend.calls
    assert sent.messages == (
        ChatMessage("user", "Weather in Paris and Rome?"),
        ChatMessage(
            "assistant",
            "Checking both.",
            tool_calls=(
                ToolCall("c1", "get_weather", PARIS),
                ToolCall("c2", "get_weather", '{"city": "Rome"}'),
            ),
        ),
        ChatMessage("tool", "sunny", tool_call_id="c1"),
        ChatMessage("tool", "9 degrees", tool_call_id="c2"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("c3", "get_time", "{}"),)),
        ChatMessage("tool", "noon", tool_call_id="c3"),
    )


HI = {"model": MODEL, "input": "hi"}
TOOL = {"type": "function", "name": "f"}
BAD: list[tuple[str, str, Any, int, str | None]] = [
    ("malformed-json", "POST", b"{not json", 400, None),
    ("not-an-object", "POST", [HI], 400, None),
    ("missing-model", "POST", {"input": "hi"}, 400, "model"),
    ("unknown-model", "POST", {"model": "nope", "input": "hi"}, 404, "model"),
    ("missing-input", "POST", {"model": MODEL}, 400, "input"),
    ("empty-input", "POST", {**HI, "input": []}, 400, "input"),
    ("bad-role", "POST", {**HI, "input": [{"role": "tool", "content": "x"}]}, 400, "input[0].role"),
    (
        "image-part",
        "POST",
        {**HI, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
        400,
        "input[0].content[0].type",
    ),
    (
        "reasoning-item",
        "POST",
        {**HI, "input": [{"type": "reasoning", "id": "rs_1", "summary": []}]},
        400,
        "input[0].type",
    ),
    (
        "function-call-arguments-not-text",
        "POST",
        {**HI, "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
        400,
        "input[0].arguments",
    ),
    (
        "function-call-without-name",
        "POST",
        {**HI, "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
        400,
        "input[0].name",
    ),
    (
        "function-output-without-call-id",
        "POST",
        {**HI, "input": [{"type": "function_call_output", "output": "sunny"}]},
        400,
        "input[0].call_id",
    ),
    (
        "function-output-image",
        "POST",
        {
            **HI,
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_image", "image_url": "u"}],
                }
            ],
        },
        400,
        "input[0].output[0].type",
    ),
    ("max-output-tokens-0", "POST", {**HI, "max_output_tokens": 0}, 400, "max_output_tokens"),
    ("temperature-3", "POST", {**HI, "temperature": 3}, 400, "temperature"),
    # A 500 before: too large for a float, it overflowed `math.isfinite`.
    ("temperature-huge-integer", "POST", {**HI, "temperature": 10**400}, 400, "temperature"),
    ("tools-not-a-list", "POST", {**HI, "tools": {"type": "function"}}, 400, "tools"),
    ("web-search-tool", "POST", {**HI, "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ("tool-without-name", "POST", {**HI, "tools": [{"type": "function"}]}, 400, "tools[0].name"),
    (
        "parameters-not-an-object",
        "POST",
        {**HI, "tools": [{**TOOL, "parameters": "city: str"}]},
        400,
        "tools[0].parameters",
    ),
    ("strict-not-bool", "POST", {**HI, "tools": [{**TOOL, "strict": 1}]}, 400, "tools[0].strict"),
    ("duplicate-tool-names", "POST", {**HI, "tools": [TOOL, TOOL]}, 400, "tools[1].name"),
    (
        "tool-choice-unknown-function",
        "POST",
        {**HI, "tools": [TOOL], "tool_choice": {"type": "function", "name": "get_time"}},
        400,
        "tool_choice",
    ),
    (
        "tool-choice-built-in",
        "POST",
        {**HI, "tools": [TOOL], "tool_choice": {"type": "file_search"}},
        400,
        "tool_choice.type",
    ),
    ("required-without-tools", "POST", {**HI, "tool_choice": "required"}, 400, "tool_choice"),
    (
        "forced-call-and-json-format",
        "POST",
        {
            **HI,
            "tools": [TOOL],
            "tool_choice": "required",
            "text": {"format": {"type": "json_object"}},
        },
        400,
        "tool_choice",
    ),
    (
        "parallel-not-bool",
        "POST",
        {**HI, "parallel_tool_calls": "yes"},
        400,
        "parallel_tool_calls",
    ),
    (
        "previous-response",
        "POST",
        {**HI, "previous_response_id": "resp_1"},
        400,
        "previous_response_id",
    ),
    ("stream-not-bool", "POST", {**HI, "stream": "yes"}, 400, "stream"),
    ("metadata-number", "POST", {**HI, "metadata": {"k": 1}}, 400, "metadata"),
    ("format-type", "POST", {**HI, "text": {"format": {"type": "xml"}}}, 400, "text.format.type"),
    (
        "schema-missing",
        "POST",
        {**HI, "text": {"format": {"type": "json_schema", "name": "n"}}},
        400,
        "text.format.schema",
    ),
    ("logprobs", "POST", {**HI, "top_logprobs": 3}, 400, "top_logprobs"),
    ("get", "GET", None, 405, None),
]


@pytest.mark.parametrize(
    ("method", "body", "status", "param"), [case[1:] for case in BAD], ids=[c[0] for c in BAD]
)
async def test_bad_input_gets_an_openai_error(
    method: str, body: Any, status: int, param: str | None
) -> None:
    backend = FakeBackend(tokens("x"))
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.request(method, RESPONSES, content=content)
            alive = await http.post(RESPONSES, json=HI)
    assert response.status_code == status, response.text
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    assert_error_shape(response.json(), type=kind, param=param)
    if status == 404:
        assert response.json()["error"]["code"] == "model_not_found"
    assert backend.calls[:-1] == []  # nothing bad reached the backend
    assert alive.status_code == 200 and alive.json()["output"][0]["content"][0]["text"] == "x"


async def test_stored_responses_are_not_found() -> None:
    with trio.fail_after(10):
        async with running(FakeBackend()) as url, client_for(url) as client:
            with pytest.raises(openai.NotFoundError) as caught:
                await client.responses.retrieve("resp_123")
    assert caught.value.code == "response_not_found"
    assert "does not store responses" in str(caught.value)


@openai_stream_gc
@pytest.mark.parametrize(
    ("error", "code", "failed_code"),
    [
        (GenerationFailed("the runner died"), "runner_error", "server_error"),
        (InvalidRequest("prompt too long", "input"), "invalid_request_error", "invalid_prompt"),
        (RuntimeError("boom"), "server_error", "server_error"),
    ],
    ids=["generation-failed", "invalid-request", "unexpected"],
)
async def test_failure_mid_stream_is_error_then_failed(
    error: Exception, code: str, failed_code: str
) -> None:
    backend = FakeBackend([TokenOut("r", "a", 0), Raise(error)])
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            stream = await client.responses.create(model=MODEL, input="hi", stream=True)
            events = [event async for event in stream]
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                async with client.responses.stream(model=MODEL, input="hi") as helper:
                    await helper.get_final_response()
    assert [e.type for e in events] == [*STREAMED[:5], "error", "response.failed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    error_event, failed = events[-2:]
    assert error_event.type == "error" and failed.type == "response.failed"
    assert error_event.code == code
    assert failed.response.status == "failed" and failed.response.error is not None
    assert failed.response.error.code == failed_code
    if code == "server_error":
        assert "boom" not in error_event.message
    else:
        assert error_event.message == failed.response.error.message == str(error)
    [partial] = failed.response.output
    assert partial.type == "message" and partial.status == "incomplete"
    assert failed.response.output_text == "a"
    assert backend.exited.is_set()


async def test_entry_failure_is_503_streamed_or_not() -> None:
    backend = FakeBackend(tokens("a"), entry_error=Unavailable("no instance is ready"))
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            streamed = await http.post(RESPONSES, json={**HI, "stream": True})
            plain = await http.post(RESPONSES, json=HI)
    for response in (streamed, plain):
        assert response.status_code == 503
        assert_error_shape(response.json(), type="unavailable_error")
        assert response.json()["error"]["message"] == "no instance is ready"


async def test_no_nesting_depth_gets_a_500() -> None:
    """A schema nested just shallowly enough to decode was echoed back in `text.format`
    too deep to encode where the answer is encoded: a 500, for a narrow band of depths
    that moves with the stack. Bodies nested past 512 levels are refused up front now."""
    statuses = set()
    with trio.fail_after(30):
        async with (
            running(FakeBackend(tokens("x"))) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            for depth in range(900, 1000):
                schema = b'{"a": ' * depth + b"1" + b"}" * depth
                body = (
                    b'{"model": "%s", "input": "hi", "text": {"format": {"type": "json_schema", '
                    b'"name": "n", "schema": %s}}}' % (MODEL.encode(), schema)
                )
                statuses.add((await http.post(RESPONSES, content=body)).status_code)
    assert statuses == {400}
