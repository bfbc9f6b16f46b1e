"""OpenAI parameters beyond plain chat, through the official `openai` client against the
real server over a fake backend: tools and tool calls (whole and streamed), logprobs,
response_format, and the legacy `/v1/completions`."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import openai
import pytest
import trio
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from exo.api.openai_request import ChatTool, function_tools
from exo.api.tool_calls import CallParser, ToolChoice, forced_call_schema
from exo.engine.protocol import (
    ChatMessage,
    Finished,
    TokenLogprob,
    TokenOut,
    Tool,
    ToolCall,
    TopLogprob,
)

from .fakes import MODEL, FakeBackend, Step, tokens
from .helpers import openai_stream_gc, post_bytes, raw_exchange, running, sse_data

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOLS = function_tools([msgspec.convert(WEATHER, ChatTool)])
CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def client_for(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# ---------------------------------------------------------------------------------------------
# The parser, on its own


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_parser_finds_calls_however_the_text_is_split(size: int) -> None:
    parser = CallParser(TOOLS)
    shown: list[str] = []
    calls: list[ToolCall] = []
    for piece in pieces(f"Let me look.\n{CALL_TEXT}\n{CALL_TEXT}", size):
        text, found = parser.feed(piece)
        shown.append(text)
        calls += found
    text, found = parser.finish()
    shown.append(text)
    calls += found
    assert "".join(shown) == "Let me look.\n\n"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ] * 2
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    assert parser.calls == calls


@pytest.mark.parametrize(
    ("reply", "shown", "names"),
    [
        ("no tools here <tool", "no tools here <tool", []),  # a partial tag at the end is text
        ('<tool_call>{"name": "other", "arguments": {}}</tool_call>', None, []),  # not offered
        ("<tool_call>not json</tool_call>ok", "<tool_call>not json</tool_call>ok", []),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "X"}}', "", ["get_weather"]),
        ('<tool_call>{"name": "get_weather", "parameters": "{}"}</tool_call>', "", ["get_weather"]),
        ('<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>', None, []),
    ],
    ids=["partial-tag", "unknown-function", "not-json", "unclosed", "parameters", "bad-args"],
)
def test_parser_keeps_what_is_not_a_call_as_text(
    reply: str, shown: str | None, names: list[str]
) -> None:
    parser = CallParser(TOOLS)
    text, calls = parser.feed(reply)
    rest, last = parser.finish()
    assert text + rest == (reply if shown is None else shown)
    assert [c.name for c in calls + last] == names


def test_a_forced_reply_is_one_json_call() -> None:
    parser = CallParser(TOOLS, forced=True)
    assert parser.feed('{"name": "get_weather", ') == ("", [])
    text, calls = parser.feed('"arguments": {"city": "Oslo"}}')
    assert (text, calls) == ("", [])
    rest, [call] = parser.finish()
    assert rest == "" and json.loads(call.arguments) == {"city": "Oslo"}


def test_forced_call_schema_allows_only_the_chosen_tools() -> None:
    two = (*TOOLS, Tool("get_time", "", '{"type": "object"}'))
    named = json.loads(forced_call_schema(two, ToolChoice("required", "get_time")))
    assert named["properties"]["name"] == {"const": "get_time"}
    assert named["required"] == ["name", "arguments"]
    either = json.loads(forced_call_schema(two, ToolChoice("required")))
    assert [o["properties"]["name"]["const"] for o in either["anyOf"]] == [
        "get_weather",
        "get_time",
    ]
    assert either["anyOf"][0]["properties"]["arguments"]["required"] == ["city"]


# ---------------------------------------------------------------------------------------------
# Tools through the client


async def test_tool_calls_whole_and_what_reaches_the_backend() -> None:
    backend = FakeBackend(tokens("Checking.", *pieces(CALL_TEXT, 5)))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            completion = await client.chat.completions.create(
                model=MODEL, messages=USER, tools=[WEATHER]
            )
            forced = await client.chat.completions.create(
                model=MODEL,
                messages=USER,
                tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
            )
            await client.chat.completions.create(
                model=MODEL, messages=USER, tools=[WEATHER], tool_choice="none"
            )
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    auto, named, none = backend.calls
    assert auto.tools == TOOLS and auto.params.json_schema is None
    # A forced choice constrains decoding to a call of that function.
    assert named.tools == TOOLS
    assert json.loads(named.params.json_schema or "")["properties"]["name"] == {
        "const": "get_weather"
    }
    assert forced.choices[0].finish_reason == "stop"  # the fake's reply is not bare JSON
    assert none.tools == ()


@openai_stream_gc
async def test_tool_calls_streamed_as_deltas() -> None:
    backend = FakeBackend(tokens("Sure", *pieces(CALL_TEXT, 4), "\n", *pieces(CALL_TEXT, 9)))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=USER, tools=[WEATHER], stream=True
            )
            chunks = [chunk async for chunk in stream]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Sure\n"
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [d.index for d in deltas] == [0, 1]
    assert all(d.function and d.function.name == "get_weather" for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_a_conversation_with_tool_results_reaches_the_backend() -> None:
    backend = FakeBackend(tokens("It is sunny."))
    messages: list[ChatCompletionMessageParam] = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            completion = await client.chat.completions.create(
                model=MODEL, messages=messages, tools=[WEATHER]
            )
    assert completion.choices[0].message.content == "It is sunny."
    assert completion.choices[0].finish_reason == "stop"
    assert backend.calls[0].messages[1:] == (
        ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
        ChatMessage("tool", "sunny, 21 C", tool_call_id="call_1"),
    )


# ---------------------------------------------------------------------------------------------
# Logprobs and response_format


def logprob_script() -> list[Step]:
    return [
        TokenOut(
            "r",
            "Hi",
            1,
            (TokenLogprob("Hi", -0.25, (TopLogprob("Hi", -0.25), TopLogprob("Yo", -1.5))),),
        ),
        TokenOut(
            "r", "!", 2, (TokenLogprob("!", float("-inf"), (TopLogprob("!", float("-inf")),)),)
        ),
        Finished("r", "stop", 4, 2),
    ]


@openai_stream_gc
async def test_logprobs_whole_and_streamed() -> None:
    backend = FakeBackend(logprob_script())
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            completion = await client.chat.completions.create(
                model=MODEL, messages=USER, logprobs=True, top_logprobs=2
            )
            stream = await client.chat.completions.create(
                model=MODEL, messages=USER, logprobs=True, stream=True
            )
            chunks = [chunk async for chunk in stream]
    assert backend.calls[0].params.logprobs == 2 and backend.calls[1].params.logprobs == 0
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    first, second = logprobs.content
    assert (first.token, first.logprob, first.bytes) == ("Hi", -0.25, [72, 105])
    assert [(t.token, t.logprob) for t in first.top_logprobs] == [("Hi", -0.25), ("Yo", -1.5)]
    assert second.logprob == -9999.0  # -inf is not JSON
    streamed = [
        entry.token
        for c in chunks
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
        for entry in c.choices[0].logprobs.content
    ]
    assert streamed == ["Hi", "!"]


async def test_json_response_format_reaches_the_engine_as_a_schema() -> None:
    backend = FakeBackend(tokens('{"a": 1}'))
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
    }
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            await client.chat.completions.create(
                model=MODEL,
                messages=USER,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "thing", "schema": schema, "strict": True},
                },
            )
            await client.chat.completions.create(
                model=MODEL, messages=USER, response_format={"type": "json_object"}
            )
    assert json.loads(backend.calls[0].params.json_schema or "") == schema
    assert json.loads(backend.calls[1].params.json_schema or "") == {"type": "object"}


# ---------------------------------------------------------------------------------------------
# /v1/completions


@openai_stream_gc
async def test_completions_whole_streamed_and_raw_prompt() -> None:
    backend = FakeBackend(tokens(" Paris", ".", finish="length", prompt_tokens=6))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            whole = await client.completions.create(
                model=MODEL, prompt="The capital of France is", temperature=0, stop=["\n"]
            )
            stream = await client.completions.create(
                model=MODEL,
                prompt=["The capital of France is"],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=2,
            )
            chunks = [chunk async for chunk in stream]
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.choices[0].text == " Paris." and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.prompt_tokens == 6
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " Paris."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    first, second = backend.calls
    assert first.text == "The capital of France is" and first.messages == ()
    assert first.params.max_tokens == 16  # OpenAI's default for this endpoint
    assert first.params.stop == ("\n",) and first.params.temperature == 0
    assert second.params.max_tokens == 2


async def test_completions_count_only_and_ignore_eos() -> None:
    """`max_tokens` 0 counts the prompt (how `exo bench` sizes prompts); `ignore_eos`
    reaches the engine."""
    backend = FakeBackend(tokens(finish="length", prompt_tokens=6))
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            counted = await client.completions.create(model=MODEL, prompt="x", max_tokens=0)
            await client.completions.create(
                model=MODEL, prompt="x", max_tokens=2, extra_body={"ignore_eos": True}
            )
    assert counted.usage is not None and counted.usage.prompt_tokens == 6
    first, second = backend.calls
    assert first.params.max_tokens == 0 and not first.params.ignore_eos
    assert second.params.ignore_eos


async def test_completions_legacy_logprobs() -> None:
    backend = FakeBackend(logprob_script())
    with trio.fail_after(10):
        async with running(backend) as url, client_for(url) as client:
            whole = await client.completions.create(model=MODEL, prompt="x", logprobs=1)
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["Hi", "!"]
    assert logprobs.token_logprobs == [-0.25, -9999.0]
    assert logprobs.text_offset == [0, 2]
    assert logprobs.top_logprobs == [{"Hi": -0.25, "Yo": -1.5}, {"!": -9999.0}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": ""}, "prompt"),
        ({"model": MODEL, "prompt": [1, 2, 3]}, "prompt"),
        ({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
        ({"model": MODEL, "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": MODEL, "prompt": "x", "echo": True}, "echo"),
        ({"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix"),
        ({"model": MODEL, "prompt": "x", "best_of": 2}, "best_of"),
        ({"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": MODEL, "prompt": "x", "ignore_eos": "yes"}, "ignore_eos"),
        ({"model": MODEL, "prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x"}, "model"),
    ],
)
async def test_completions_bad_input(body: dict[str, Any], param: str) -> None:
    backend = FakeBackend(tokens("x"))
    with trio.fail_after(10):
        async with running(backend) as url:
            status, _, reply = await raw_exchange(url, post_bytes("/v1/completions", body))
            unknown = await raw_exchange(
                url, post_bytes("/v1/completions", {"model": "nope", "prompt": "x"})
            )
    assert status == 400 and json.loads(reply)["error"]["param"] == param
    assert unknown[0] == 404 and json.loads(unknown[2])["error"]["code"] == "model_not_found"
    assert backend.calls == []


async def test_streamed_completion_events_are_text_completion_objects() -> None:
    backend = FakeBackend(tokens("a", "b"))
    with trio.fail_after(10):
        async with running(backend) as url:
            status, _, body = await raw_exchange(
                url, post_bytes("/v1/completions", {"model": MODEL, "prompt": "x", "stream": True})
            )
    events = sse_data(body.decode())
    assert status == 200 and events[-1] == "[DONE]"
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["a", "b", ""]
    assert {e["object"] for e in events[:-1]} == {"text_completion"}
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
