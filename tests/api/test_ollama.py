"""The Ollama dialect through the official `ollama` client and raw HTTP, against the real
server over a fake backend: every endpoint, streamed and not, at the root and under
/ollama, and errors in Ollama's `{"error": ...}` shape."""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama
import pytest
import trio

from exo.api.app import MAX_REQUEST_BYTES
from exo.api.backend import GenerationFailed
from exo.api.ollama_response import OLLAMA_API_VERSION

from .fakes import MODEL, FakeBackend, Raise, tokens
from .helpers import raw_exchange, running

USER = [{"role": "user", "content": "hi"}]


def ollama_client(url: str) -> ollama.AsyncClient:
    # Without keep-alive connections, nothing is left open when a test's server stops.
    return ollama.AsyncClient(host=url, limits=httpx.Limits(max_keepalive_connections=0))


async def test_chat_streamed_and_not() -> None:
    backend = FakeBackend(tokens("Hel", "lo", "!", prompt_tokens=5))
    with trio.fail_after(10):
        async with running(backend) as url:
            client = ollama_client(url)
            reply = await client.chat(model=MODEL, messages=USER, stream=False)
            assert reply.message.content == "Hello!"
            assert reply.done and reply.done_reason == "stop"
            assert (reply.prompt_eval_count, reply.eval_count) == (5, 3)
            parts = [
                part async for part in await client.chat(model=MODEL, messages=USER, stream=True)
            ]
    assert "".join(p.message.content or "" for p in parts) == "Hello!"
    assert [p.done for p in parts] == [False, False, False, True]
    assert parts[-1].eval_count == 3
    # Options map onto sampling: num_predict is max_tokens.
    call = backend.calls[0]
    assert call.messages[0].content == "hi"


async def test_options_and_generate() -> None:
    backend = FakeBackend(tokens("Paris", finish="length", prompt_tokens=9))
    with trio.fail_after(10):
        async with running(backend) as url:
            client = ollama_client(url)
            reply = await client.generate(
                model=MODEL,
                prompt="Capital of France?",
                system="Be brief.",
                stream=False,
                options={
                    "temperature": 0,
                    "top_p": 0.5,
                    "num_predict": 4,
                    "stop": ["\n"],
                    "seed": 3,
                },
            )
            assert reply.response == "Paris" and reply.done_reason == "length"
            streamed = [
                p async for p in await client.generate(model=MODEL, prompt="Capital?", stream=True)
            ]
            loaded = await client.generate(model=MODEL, prompt="", stream=False)
    assert "".join(p.response or "" for p in streamed) == "Paris" and streamed[-1].done
    assert loaded.done and loaded.done_reason == "load"
    first = backend.calls[0]
    assert [(m.role, m.content) for m in first.messages] == [
        ("system", "Be brief."),
        ("user", "Capital of France?"),
    ]
    params = first.params
    assert (params.temperature, params.top_p, params.max_tokens, params.stop, params.seed) == (
        0.0,
        0.5,
        4,
        ("\n",),
        3,
    )


async def test_format_raw_sampling_options_and_defaults() -> None:
    backend = FakeBackend(tokens('{"a": 1}'))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    with trio.fail_after(10):
        async with running(backend) as url:
            client = ollama_client(url)
            await client.chat(model=MODEL, messages=USER, format="json", stream=False)
            await client.chat(
                model=MODEL,
                messages=USER,
                format=schema,
                stream=False,
                options={
                    "top_k": 5,
                    "min_p": 0.1,
                    "repeat_penalty": 1.3,
                    "presence_penalty": 0.5,
                    "frequency_penalty": -0.5,
                },
            )
            await client.generate(model=MODEL, prompt="1, 2, 3,", raw=True, stream=False)
    as_json, shaped, raw = backend.calls
    assert json.loads(as_json.params.json_schema or "") == {"type": "object"}
    # No options: Ollama's own defaults.
    assert (as_json.params.temperature, as_json.params.top_p, as_json.params.top_k) == (
        0.8,
        0.9,
        40,
    )
    assert json.loads(shaped.params.json_schema or "") == schema
    p = shaped.params
    assert (p.top_k, p.min_p, p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (
        5,
        0.1,
        1.3,
        0.5,
        -0.5,
    )
    assert (raw.text, raw.messages) == ("1, 2, 3,", ())


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'


async def test_tools_come_back_as_tool_calls() -> None:
    backend = FakeBackend(tokens("Let me see.", CALL[:10], CALL[10:]))
    with trio.fail_after(10):
        async with running(backend) as url:
            client = ollama_client(url)
            reply = await client.chat(
                model=MODEL, messages=USER, tools=[WEATHER_TOOL], stream=False
            )
            parts = [
                part
                async for part in await client.chat(
                    model=MODEL, messages=USER, tools=[WEATHER_TOOL], stream=True
                )
            ]
            # The call and its result go back in the next turn, in Ollama's shape.
            await client.chat(
                model=MODEL,
                messages=[
                    *USER,
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
                        ],
                    },
                    {"role": "tool", "content": "cold", "tool_name": "get_weather"},
                ],
                tools=[WEATHER_TOOL],
                stream=False,
            )
    [call] = reply.message.tool_calls or []
    assert (call.function.name, dict(call.function.arguments)) == ("get_weather", {"city": "Oslo"})
    assert reply.message.content == "Let me see."
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.name for c in streamed] == ["get_weather"]
    assert "".join(p.message.content or "" for p in parts) == "Let me see."
    assert backend.calls[0].tools[0].name == "get_weather"
    history = backend.calls[2].messages
    assert history[1].tool_calls[0].name == "get_weather"
    assert json.loads(history[1].tool_calls[0].arguments) == {"city": "Oslo"}
    assert (history[2].role, history[2].content) == ("tool", "cold")


async def test_tags_show_ps_version_and_head() -> None:
    backend = FakeBackend()
    with trio.fail_after(10):
        async with running(backend) as url:
            client = ollama_client(url)
            listed = await client.list()
            assert [m.model for m in listed.models] == [MODEL]
            shown = await client.show(MODEL)
            assert shown.modelinfo is not None
            assert shown.modelinfo["llama.block_count"] > 0
            assert (await client.ps()).models == []
            async with httpx.AsyncClient(base_url=url) as raw:
                for prefix in ("", "/ollama"):
                    version = await raw.get(f"{prefix}/api/version")
                    assert version.json() == {"version": OLLAMA_API_VERSION}
                    head = await raw.head(f"{prefix}/")
                    assert head.status_code == 200
                    tags = await raw.get(f"{prefix}/api/tags")
                    assert tags.json()["models"][0]["name"] == MODEL


async def test_the_ollama_prefix_serves_chat() -> None:
    backend = FakeBackend(tokens("ok"))
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as raw:
            response = await raw.post(
                "/ollama/api/chat", json={"model": MODEL, "messages": USER, "stream": False}
            )
    assert response.json()["message"] == {"role": "assistant", "content": "ok"}


BAD: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/api/chat", b"{not json", 400, "not valid JSON"),
    ("POST", "/api/chat", b"\xff\xfe", 400, "UTF-8"),
    ("POST", "/api/chat", {"messages": USER}, 400, "'model' is required"),
    ("POST", "/api/chat", {"model": "", "messages": USER}, 400, "'model' must be a non-empty"),
    ("POST", "/api/chat", {"model": MODEL, "messages": []}, 400, "'messages' must be a non-empty"),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": USER, "stream": "yes"},
        400,
        "'stream' must be true or false, got a string",
    ),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": USER, "options": 3},
        400,
        "'options' must be an object or null, got an integer",
    ),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "'messages[0].role' cannot be 'wizard'",
    ),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
        400,
        "'messages[0].images' is not supported by exo yet",
    ),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": USER, "options": {"num_predict": 0}},
        400,
        "'options.num_predict' must be a non-zero integer",
    ),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": USER, "options": {"temperature": 101}},
        400,
        "'options.temperature' must be a number <= 100",
    ),
    (
        "POST",
        "/api/generate",
        {"model": MODEL, "prompt": "x", "suffix": "y"},
        400,
        "'suffix' is not supported by exo yet",
    ),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": USER, "options": {"num_predict": "x"}},
        400,
        "num_predict",
    ),
    ("POST", "/api/chat", {"model": MODEL, "messages": USER, "format": "xml"}, 400, "format"),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": USER, "tools": [{"type": "x"}]},
        400,
        "tools",
    ),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": USER, "options": {"top_k": -1}},
        400,
        "top_k",
    ),
    (
        "POST",
        "/api/chat",
        {"model": MODEL, "messages": USER, "options": {"repeat_penalty": "x"}},
        400,
        "repeat_penalty",
    ),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "x", "raw": "yes"}, 400, "raw"),
    ("POST", "/api/chat", {"model": "nope", "messages": USER}, 404, "model 'nope' not found"),
    ("POST", "/api/generate", {"model": MODEL, "prompt": 3}, 400, "prompt"),
    ("POST", "/api/generate", {"model": "nope", "prompt": "x"}, 404, "not found"),
    ("POST", "/api/show", {"model": "nope"}, 404, "not found"),
    ("POST", "/api/show", {}, 400, "'model' is required"),
    ("POST", "/api/show", [], 400, "The request body must be a JSON object, got a list"),
    ("GET", "/api/chat", None, 405, "not allowed"),
    ("POST", "/api/tags", None, 405, "not allowed"),
    ("GET", "/api/nothing", None, 404, ""),
    ("POST", "/ollama/api/chat", {"model": "nope", "messages": USER}, 404, "not found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "text"), BAD)
async def test_bad_input_gets_an_ollama_error(
    method: str, path: str, body: Any, status: int, text: str
) -> None:
    backend = FakeBackend(tokens("x"))
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as raw:
            response = await raw.request(method, path, content=content)
            alive = await raw.get("/api/version")
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error"} and isinstance(payload["error"], str), payload
    assert text in payload["error"], payload
    assert alive.status_code == 200  # the node keeps serving


async def test_a_body_over_the_limit_is_413_in_ollama_shape() -> None:
    declared = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (MAX_REQUEST_BYTES + 1)
    )
    with trio.fail_after(10):
        async with running(FakeBackend()) as url:
            status, _, content = await raw_exchange(url, declared)
    assert status == 413
    assert str(MAX_REQUEST_BYTES) in json.loads(content)["error"]


async def test_an_error_mid_stream_is_an_error_line() -> None:
    backend = FakeBackend([*tokens("a", "b")[:1], Raise(GenerationFailed("runner died"))])
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as raw:
            response = await raw.post("/api/chat", json={"model": MODEL, "messages": USER})
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0]["message"]["content"] == "a" and not lines[0]["done"]
    assert lines[-1] == {"error": "runner died"}
