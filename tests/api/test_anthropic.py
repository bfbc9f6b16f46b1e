"""The Anthropic Messages dialect through the official `anthropic` client and raw HTTP,
against the real server over a fake backend: replies streamed and not, parameters reaching
the backend, count_tokens, and errors in Anthropic's `{"type": "error", ...}` shape."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
import trio

from exo.api.anthropic_request import MAX_STOP_SEQUENCES
from exo.api.app import MAX_REQUEST_BYTES
from exo.api.backend import GenerationFailed, Unavailable
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut, Tool, ToolCall

from .fakes import MODEL, FakeBackend, Raise, Step, tokens
from .helpers import raw_exchange, running

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
USER: list[Any] = [{"role": "user", "content": "hi"}]


def client_for(url: str) -> anthropic.AsyncAnthropic:
    # Without keep-alive connections, nothing is left open when a test's server stops.
    return anthropic.AsyncAnthropic(
        base_url=url,
        api_key="x",
        max_retries=0,
        http_client=httpx2.AsyncClient(limits=httpx2.Limits(max_keepalive_connections=0)),
    )


def sse_events(body: str) -> list[tuple[str, Any]]:
    """(event name, decoded data) for each server-sent event of an Anthropic stream."""
    events: list[tuple[str, Any]] = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        data = json.loads(data_line.removeprefix("data: "))
        name = name_line.removeprefix("event: ")
        assert data["type"] == name, block
        events.append((name, data))
    return events


def assert_anthropic_error(payload: Any, type: str) -> str:
    """Checks Anthropic's error shape; returns the message."""
    assert set(payload) == {"type", "error"} and payload["type"] == "error", payload
    assert set(payload["error"]) == {"type", "message"}, payload
    assert payload["error"]["type"] == type, payload
    message = payload["error"]["message"]
    assert isinstance(message, str) and message, payload
    return message


def stopped_by(sequence: str) -> list[Step]:
    return [TokenOut("r", "Paris", 0), Finished("r", "stop", 6, 1, stop_sequence=sequence)]


ENDINGS: list[tuple[list[Step], str, str | None]] = [
    (tokens("Hel", "lo", "!", prompt_tokens=5), "end_turn", None),
    (tokens("Hel", "lo", finish="length", prompt_tokens=5), "max_tokens", None),
    (stopped_by("END"), "stop_sequence", "END"),
]


@pytest.mark.parametrize(("script", "reason", "sequence"), ENDINGS)
async def test_create_and_stream_report_text_stop_reason_and_usage(
    script: list[Step], reason: str, sequence: str | None
) -> None:
    backend = FakeBackend(script)
    text = "".join(step.text for step in script if isinstance(step, TokenOut))
    [finished] = [step for step in script if isinstance(step, Finished)]
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            message = await client.messages.create(model=MODEL, max_tokens=50, messages=USER)
            async with client.messages.stream(model=MODEL, max_tokens=50, messages=USER) as stream:
                streamed = "".join([piece async for piece in stream.text_stream])
                final = await stream.get_final_message()
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == MODEL
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [
        ("text", text)
    ]
    assert (message.stop_reason, message.stop_sequence) == (reason, sequence)
    usage = (finished.prompt_tokens, finished.completion_tokens)
    assert (message.usage.input_tokens, message.usage.output_tokens) == usage
    # The stream's accumulator ends with the same message.
    assert streamed == text
    assert (final.stop_reason, final.stop_sequence) == (reason, sequence)
    assert (final.usage.input_tokens, final.usage.output_tokens) == usage
    assert final.content[0].type == "text" and final.content[0].text == text


async def test_raw_stream_events_come_in_the_documented_order() -> None:
    backend = FakeBackend(tokens("Hel", "lo", prompt_tokens=4))
    request = {"model": MODEL, "max_tokens": 9, "messages": USER, "stream": True}
    with trio.fail_after(10):
        async with running(backend) as url:
            async with client_for(url) as client:
                raw = await client.messages.create(**request)
                types = [event.type async for event in raw]
            async with httpx.AsyncClient(base_url=url) as http:
                response = await http.post(MESSAGES, json=request)
    delta = "content_block_delta"
    assert types == [
        "message_start",
        "content_block_start",
        delta,
        delta,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        delta,
        delta,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    nothing_cached = {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    assert start["usage"] == {"input_tokens": 0, "output_tokens": 0, **nothing_cached}
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert [data["delta"] for _, data in events[3:5]] == [
        {"type": "text_delta", "text": "Hel"},
        {"type": "text_delta", "text": "lo"},
    ]
    assert events[6][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[6][1]["usage"] == {"input_tokens": 4, "output_tokens": 2, **nothing_cached}


async def test_system_prompts_and_turns_reach_the_backend_in_order() -> None:
    backend = FakeBackend(tokens("ok"))
    turns: list[Any] = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "four"},
    ]
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            await client.messages.create(
                model=MODEL, max_tokens=5, messages=turns, system="Be brief."
            )
            await client.messages.create(
                model=MODEL,
                max_tokens=5,
                messages=USER,
                system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            )
            await client.messages.create(model=MODEL, max_tokens=5, messages=USER)
    first, second, third = ([(m.role, m.content) for m in call.messages] for call in backend.calls)
    assert first == [
        ("system", "Be brief."),
        ("user", "one\ntwo"),
        ("assistant", "three"),
        ("user", "four"),
    ]
    assert second == [("system", "A\nB"), ("user", "hi")]
    assert third == [("user", "hi")]


async def test_sampling_parameters_reach_the_backend() -> None:
    backend = FakeBackend(tokens("ok"))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            await client.messages.create(
                model=MODEL,
                max_tokens=12,
                messages=USER,
                stop_sequences=["END", "\n\n"],
                metadata={"user_id": "u-1"},  # accepted and ignored
                service_tier="auto",  # unknown to exo: ignored
                # anthropic 2.x dropped the sampling keywords; older clients send them as these.
                extra_body={"temperature": 0.3, "top_p": 0.9, "top_k": 40},
            )
            await client.messages.create(model=MODEL, max_tokens=1, messages=USER)
    assert backend.calls[0].params == SamplingParams(
        temperature=0.3, top_p=0.9, max_tokens=12, stop=("END", "\n\n"), top_k=40
    )
    assert backend.calls[1].params == SamplingParams(max_tokens=1)


async def test_count_tokens_counts_the_prompt_without_generating() -> None:
    backend = FakeBackend(tokens(prompt_tokens=23))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            counted = await client.messages.count_tokens(
                model=MODEL, messages=USER, system="Be brief."
            )
    assert counted.input_tokens == 23
    [call] = backend.calls
    assert call.params.max_tokens == 0  # the engine's count-only request
    assert [(m.role, m.content) for m in call.messages] == [("system", "Be brief."), ("user", "hi")]


WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "cache_control": {"type": "ephemeral"},  # accepted and ignored
}
CLOCK: Any = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
# A call in the tags the engine's tool prompt asks for, split across tokens.
CALLING = tokens(
    "Let me check.",
    "<tool_",
    'call>{"name": "get_weather", ',
    '"arguments": {"city": "Paris"}}</tool',
    "_call>",
)


def tool_uses(content: list[Any]) -> list[tuple[str, Any]]:
    """(name, input) of each tool_use block; checks their ids."""
    uses = [block for block in content if block.type == "tool_use"]
    assert all(block.id.startswith("toolu_") for block in uses), uses
    return [(block.name, block.input) for block in uses]


@pytest.mark.parametrize(
    ("script", "texts"),
    [(CALLING, ["Let me check."]), (CALLING[1:], [])],
    ids=["after-text", "alone"],
)
async def test_a_call_in_the_reply_becomes_a_tool_use_block(
    script: list[Step], texts: list[str]
) -> None:
    backend = FakeBackend(script)
    request: Any = {"model": MODEL, "max_tokens": 50, "messages": USER, "tools": [WEATHER]}
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            message = await client.messages.create(**request)
            async with client.messages.stream(**request) as stream:
                final = await stream.get_final_message()
    call = ("get_weather", {"city": "Paris"})
    assert [block.text for block in message.content if block.type == "text"] == texts
    assert [block.type for block in message.content][-1] == "tool_use"
    assert tool_uses(message.content) == [call]
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    # The stream's accumulator rebuilds the block, `input` parsed from its JSON delta; the
    # text block (empty without text) opened with the stream stays first.
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert final.content[0].type == "text" and final.content[0].text == "".join(texts)
    assert tool_uses(final.content) == [call] and final.stop_reason == "tool_use"
    [tool] = backend.calls[0].tools
    assert (tool.name, json.loads(tool.parameters)) == ("get_weather", WEATHER["input_schema"])


async def test_a_streamed_call_is_a_tool_use_block_after_the_text_block() -> None:
    backend = FakeBackend([*CALLING[:-1], TokenOut("r", "\nDone.", 5), CALLING[-1]])
    request: Any = {"model": MODEL, "max_tokens": 50, "messages": USER, "tools": [WEATHER]}
    with trio.fail_after(10):
        async with running(backend) as url:
            async with client_for(url) as client:
                raw = await client.messages.create(**request, stream=True)
                events = [event async for event in raw]
            async with httpx.AsyncClient(base_url=url) as http:
                response = await http.post(MESSAGES, json={**request, "stream": True})
    assert [(event.type, getattr(event, "index", None)) for event in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),  # "Let me check."
        ("content_block_stop", 0),  # closed before the call's block starts
        ("content_block_start", 1),
        ("content_block_delta", 1),  # the whole arguments JSON
        ("content_block_stop", 1),
        ("content_block_start", 2),  # the text after the call, its newline left out
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    blocks = [e.content_block.to_dict() for e in events if e.type == "content_block_start"]
    assert [block["type"] for block in blocks] == ["text", "tool_use", "text"]
    assert blocks[1]["name"] == "get_weather" and blocks[1]["input"] == {}
    data = [data for _, data in sse_events(response.text)]
    deltas = [d["delta"] for d in data if d["type"] == "content_block_delta"]
    assert deltas == [
        {"type": "text_delta", "text": "Let me check."},
        {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'},
        {"type": "text_delta", "text": "Done."},
    ]
    assert data[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


@pytest.mark.parametrize(
    ("choice", "offered", "names"),
    [
        ({"type": "any"}, ["get_weather", "get_time"], ["get_weather", "get_time"]),
        (
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            ["get_weather"],
            ["get_weather"],
        ),
    ],
    ids=["any", "tool"],
)
async def test_a_forced_tool_choice_constrains_decoding_to_a_call(
    choice: Any, offered: list[str], names: list[str]
) -> None:
    # Constrained decoding makes the whole reply the call's JSON, without tags.
    backend = FakeBackend(tokens('{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}'))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            message = await client.messages.create(
                model=MODEL,
                max_tokens=50,
                messages=USER,
                tools=[WEATHER, CLOCK],
                tool_choice=choice,
            )
    [call] = backend.calls
    assert [tool.name for tool in call.tools] == offered
    assert call.params.json_schema is not None
    schema = json.loads(call.params.json_schema)
    options = schema.get("anyOf", [schema])
    assert [option["properties"]["name"]["const"] for option in options] == names
    assert options[0]["properties"]["arguments"] == WEATHER["input_schema"]
    assert [block.type for block in message.content] == ["tool_use"]
    assert tool_uses(message.content) == [("get_weather", {"city": "Oslo"})]
    assert message.stop_reason == "tool_use"


async def test_tool_choice_none_shows_the_model_no_tools() -> None:
    backend = FakeBackend(CALLING)
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            message = await client.messages.create(
                model=MODEL,
                max_tokens=50,
                messages=USER,
                tools=[WEATHER],
                tool_choice={"type": "none"},
            )
    [call] = backend.calls
    assert call.tools == () and call.params.json_schema is None
    # Nothing was offered, so tags in the reply are only text.
    assert [block.type for block in message.content] == ["text"]
    assert message.stop_reason == "end_turn"


async def test_tool_use_and_tool_result_blocks_reach_the_backend_as_calls_and_results() -> None:
    backend = FakeBackend(tokens("It is 18 C."))
    turns: Any = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "data"}],
                    "is_error": True,
                },
                {"type": "text", "text": "And Rome?"},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_3", "name": "get_time", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
    ]
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            message = await client.messages.create(
                model=MODEL, max_tokens=50, messages=turns, tools=[WEATHER, CLOCK], system="S"
            )
    assert [block.type for block in message.content] == ["text"]
    assert message.stop_reason == "end_turn"
    paris = ToolCall("toolu_1", "get_weather", '{"city": "Paris"}')
    oslo = ToolCall("toolu_2", "get_weather", '{"city": "Oslo"}')
    assert backend.calls[0].messages == (
        ChatMessage("system", "S"),
        ChatMessage("user", "Weather in Paris and Oslo?"),
        ChatMessage("assistant", "Checking.", tool_calls=(paris, oslo)),
        ChatMessage("tool", "18 C", tool_call_id="toolu_1"),
        ChatMessage("tool", "Error: no\ndata", tool_call_id="toolu_2"),
        ChatMessage("user", "And Rome?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("toolu_3", "get_time", "{}"),)),
        ChatMessage("tool", "", tool_call_id="toolu_3"),
    )


async def test_count_tokens_counts_the_tools_too() -> None:
    backend = FakeBackend(tokens(prompt_tokens=80))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            counted = await client.messages.count_tokens(
                model=MODEL,
                messages=USER,
                tools=[WEATHER, CLOCK],
                tool_choice={"type": "tool", "name": "get_time"},
            )
    assert counted.input_tokens == 80
    [call] = backend.calls
    # The count-only generation renders the tools the model would be shown.
    assert call.params == SamplingParams(max_tokens=0)
    assert call.tools == (Tool("get_time", "", json.dumps(CLOCK["input_schema"])),)


def _body(**overrides: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 5, "messages": USER, **overrides}


def _without(name: str) -> dict[str, Any]:
    return {k: v for k, v in _body().items() if k != name}


def _user(*blocks: Any) -> list[Any]:
    return [{"role": "user", "content": list(blocks)}]


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
TOOL = {"name": "f", "input_schema": {"type": "object"}}
INVALID = "invalid_request_error"


def _tools(*tools: Any, **overrides: Any) -> dict[str, Any]:
    return _body(tools=list(tools), **overrides)


def _assistant(*blocks: Any) -> list[Any]:
    return [*USER, {"role": "assistant", "content": list(blocks)}, *USER]


BAD: list[tuple[str, str, Any, int, str, str]] = [
    ("POST", MESSAGES, b"{not json", 400, INVALID, "not valid JSON"),
    ("POST", MESSAGES, b"\xff\xfe", 400, INVALID, "UTF-8"),
    ("POST", MESSAGES, [1, 2], 400, INVALID, "JSON object"),
    ("POST", MESSAGES, _without("model"), 400, INVALID, "'model'"),
    ("POST", MESSAGES, _body(model="nope"), 404, "not_found_error", "'nope'"),
    ("POST", MESSAGES, _without("max_tokens"), 400, INVALID, "'max_tokens' is required"),
    ("POST", MESSAGES, _body(max_tokens=0), 400, INVALID, "'max_tokens'"),
    ("POST", MESSAGES, _body(max_tokens="5"), 400, INVALID, "'max_tokens'"),
    ("POST", MESSAGES, _body(messages=[]), 400, INVALID, "'messages'"),
    ("POST", MESSAGES, _body(messages=[{"role": "system", "content": "x"}]), 400, INVALID, "role"),
    ("POST", MESSAGES, _body(messages=["hi"]), 400, INVALID, "messages[0]"),
    ("POST", MESSAGES, _body(messages=_user(IMAGE)), 400, INVALID, "cannot be 'image'"),
    (
        "POST",
        MESSAGES,
        _body(messages=_user({"type": "tool_result", "tool_use_id": "t", "content": [IMAGE]})),
        400,
        INVALID,
        "content[0].content[0].type",
    ),
    ("POST", MESSAGES, _body(messages=_user({"type": "tool_result"})), 400, INVALID, "tool_use_id"),
    (
        "POST",
        MESSAGES,
        _body(messages=_user({"type": "tool_use", "id": "t", "name": "f", "input": {}})),
        400,
        INVALID,
        "not tool_use",  # only an assistant makes calls
    ),
    (
        "POST",
        MESSAGES,
        _body(messages=_assistant({"type": "tool_use", "id": "t", "name": "f", "input": "{}"})),
        400,
        INVALID,
        "messages[1].content[0]",
    ),
    (
        "POST",
        MESSAGES,
        _body(messages=[*USER, {"role": "assistant", "content": "The"}]),
        400,
        INVALID,
        "prefill",
    ),
    ("POST", MESSAGES, _body(system=3), 400, INVALID, "'system'"),
    ("POST", MESSAGES, _tools({"input_schema": {"type": "object"}}), 400, INVALID, "tools[0].name"),
    ("POST", MESSAGES, _tools({"name": "f"}), 400, INVALID, "tools[0].input_schema"),
    (
        "POST",
        MESSAGES,
        _tools({"name": "f", "input_schema": {"type": "string"}}),
        400,
        INVALID,
        "tools[0].input_schema",
    ),
    ("POST", MESSAGES, _tools(TOOL, TOOL), 400, INVALID, "Two tools are named 'f'"),
    (
        "POST",
        MESSAGES,
        _tools({"type": "web_search_20250305", "name": "web_search"}),
        400,
        INVALID,
        "cannot be 'web_search_20250305' (server and Anthropic-defined tools",
    ),
    ("POST", MESSAGES, _tools({"type": "bash_20250124", "name": "bash"}), 400, INVALID, "bash"),
    ("POST", MESSAGES, _body(tools=TOOL), 400, INVALID, "'tools' must be a list"),
    (
        "POST",
        MESSAGES,
        _tools(TOOL, tool_choice={"type": "tool", "name": "g"}),
        400,
        INVALID,
        "names 'g', which is not in 'tools'",
    ),
    ("POST", MESSAGES, _body(tool_choice={"type": "any"}), 400, INVALID, "needs 'tools'"),
    ("POST", MESSAGES, _tools(TOOL, tool_choice={"type": "tool"}), 400, INVALID, "tool_choice"),
    ("POST", MESSAGES, _tools(TOOL, tool_choice="auto"), 400, INVALID, "tool_choice"),
    (
        "POST",
        MESSAGES,
        _tools(TOOL, tool_choice={"type": "auto", "disable_parallel_tool_use": "yes"}),
        400,
        INVALID,
        "disable_parallel_tool_use",
    ),
    ("POST", MESSAGES, _body(thinking={"type": "enabled"}), 400, INVALID, "thinking"),
    (
        "POST",
        MESSAGES,
        _body(output_config={"format": {"type": "json_schema", "schema": {}}}),
        400,
        INVALID,
        "output_config.format",
    ),
    ("POST", MESSAGES, _body(temperature=1.5), 400, INVALID, "'temperature'"),
    ("POST", MESSAGES, _body(top_p=0), 400, INVALID, "'top_p'"),
    ("POST", MESSAGES, _body(top_p=10**400), 400, INVALID, "'top_p'"),  # a 500 before
    ("POST", MESSAGES, _body(top_k=-1), 400, INVALID, "'top_k'"),
    ("POST", MESSAGES, _body(stop_sequences="END"), 400, INVALID, "'stop_sequences'"),
    (
        "POST",
        MESSAGES,
        _body(stop_sequences=[f"s{i}" for i in range(MAX_STOP_SEQUENCES + 1)]),
        400,
        INVALID,
        f"at most {MAX_STOP_SEQUENCES} items",
    ),
    ("POST", MESSAGES, _body(stop_sequences=[""]), 400, INVALID, "non-empty"),
    ("POST", MESSAGES, _body(stream="yes"), 400, INVALID, "'stream'"),
    ("POST", COUNT, {"model": "nope", "messages": USER}, 404, "not_found_error", "'nope'"),
    ("POST", COUNT, {"model": MODEL}, 400, INVALID, "'messages'"),
    ("POST", COUNT, {"model": MODEL, "messages": USER, "tools": [{}]}, 400, INVALID, "tools[0]"),
    ("GET", MESSAGES, None, 405, INVALID, "not allowed"),
    ("GET", COUNT, None, 405, INVALID, "not allowed"),
    ("POST", f"{MESSAGES}/nothing", _body(), 404, "not_found_error", "Unknown route"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "type", "text"), BAD)
async def test_bad_input_gets_an_anthropic_error(
    method: str, path: str, body: Any, status: int, type: str, text: str
) -> None:
    backend = FakeBackend(tokens("x"))
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.request(method, path, content=content)
            alive = await http.post(MESSAGES, json=_body())
    assert response.status_code == status, response.text
    assert text in assert_anthropic_error(response.json(), type)
    assert alive.status_code == 200 and alive.json()["content"][0]["text"] == "x"
    assert len(backend.calls) == 1  # nothing bad reached the backend


async def test_a_body_over_the_limit_is_413_request_too_large() -> None:
    declared = (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (MAX_REQUEST_BYTES + 1)
    )
    with trio.fail_after(10):
        async with running(FakeBackend()) as url:
            status, _, content = await raw_exchange(url, declared)
    assert status == 413
    message = assert_anthropic_error(json.loads(content), "request_too_large")
    assert str(MAX_REQUEST_BYTES) in message


async def test_backend_errors_keep_their_status_in_anthropic_shape() -> None:
    unavailable = FakeBackend(entry_error=Unavailable("no instance became ready"))
    broken = FakeBackend([Raise(RuntimeError("a bug"))])
    with trio.fail_after(10):
        async with running(unavailable) as url, client_for(url) as client:
            with pytest.raises(anthropic.APIStatusError) as overloaded:
                await client.messages.create(model=MODEL, max_tokens=5, messages=USER)
        async with running(broken) as url, httpx.AsyncClient(base_url=url) as http:
            crashed = await http.post(MESSAGES, json=_body())
            crashed_stream = await http.post(MESSAGES, json=_body(stream=True))
    assert overloaded.value.status_code == 503
    assert "no instance" in assert_anthropic_error(overloaded.value.body, "overloaded_error")
    # An unexpected exception: the app's catch-all, still in Anthropic's shape, no details.
    assert crashed.status_code == 500
    assert "a bug" not in assert_anthropic_error(crashed.json(), "api_error")
    name, data = sse_events(crashed_stream.text)[-1]
    assert name == "error" and "a bug" not in assert_anthropic_error(data, "api_error")


async def test_a_failure_mid_stream_ends_with_an_error_event() -> None:
    script: list[Step] = [TokenOut("r", "a", 0), Raise(GenerationFailed("runner died"))]
    backend = FakeBackend(script)
    with trio.fail_after(10):
        async with running(backend) as url:
            async with httpx.AsyncClient(base_url=url) as http:
                response = await http.post(MESSAGES, json=_body(stream=True))
            async with client_for(url) as client:
                pieces: list[str] = []
                with pytest.raises(anthropic.APIStatusError) as caught:
                    async with client.messages.stream(
                        model=MODEL, max_tokens=5, messages=USER
                    ) as stream:
                        async for piece in stream.text_stream:
                            pieces.append(piece)
    events = sse_events(response.text)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "error",
    ]
    assert assert_anthropic_error(events[-1][1], "overloaded_error") == "runner died"
    assert pieces == ["a"]
    assert "runner died" in str(caught.value)
