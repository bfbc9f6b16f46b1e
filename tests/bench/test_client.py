"""One streamed request, token counting and the node checks, against scripted answers."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
import trio

from exo.bench.client import BenchError, check_node, make_counter, stream_request

from .fakes import MODEL, FakeNode, bpe_like, sse

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://fake")


def streaming(body: bytes, status: int = 200, **headers: str) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    return handle


async def test_a_completion_stream_is_timed_per_chunk() -> None:
    node = FakeNode()
    with trio.fail_after(10):
        async with node.client() as http:
            result = await stream_request(http, "completions", MODEL, "1. the river", 5, 3)
    assert result.outcome == "ok" and result.index == 3
    assert len(result.chunk_times) == 5 and list(result.chunk_times) == sorted(result.chunk_times)
    assert (result.prompt_tokens, result.completion_tokens) == (bpe_like("1. the river"), 5)
    assert result.finish_reason == "length" and result.http_status == 200
    sent = node.prompts[0]
    assert sent == "1. the river"


async def test_a_chat_stream_with_cached_tokens() -> None:
    usage = {
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    body = sse(
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hi"}}]},
        {"choices": [{"delta": {"content": "!"}, "finish_reason": "length"}]},
        {"choices": [], "usage": usage},
    )
    seen: list[dict[str, object]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=body)

    with trio.fail_after(10):
        async with client(handle) as http:
            result = await stream_request(http, "chat", MODEL, "hello", 2, 0)
    assert result.outcome == "ok" and len(result.chunk_times) == 2
    assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (9, 2, 4)
    [request] = seen
    assert request["messages"] == [{"role": "user", "content": "hello"}]
    assert request["ignore_eos"] is True and request["max_tokens"] == 2
    assert request["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("handler", "outcome", "error"),
    [
        (
            streaming(b'{"error": {"message": "busy"}}', 429, **{"Retry-After": "2"}),
            "rejected",
            "busy",
        ),
        (streaming(b'{"error": {"message": "no"}}', 503), "failed", "HTTP 503: no"),
        (
            streaming(sse({"choices": [{"text": "a"}]}, {"error": {"message": "runner died"}})),
            "failed",
            "stream failed: runner died",
        ),
        (streaming(b'data: {"choices": [{"text": "a"}]}\n\n'), "failed", "ended before"),
        (streaming(b"data: {nope\n\n"), "failed", "bad stream event"),
    ],
    ids=["429", "503", "error-event", "cut-short", "not-json"],
)
async def test_failures_are_recorded_not_raised(handler: Handler, outcome: str, error: str) -> None:
    with trio.fail_after(10):
        async with client(handler) as http:
            result = await stream_request(http, "completions", MODEL, "x", 4, 0)
    assert result.outcome == outcome
    assert result.error is not None and error in result.error
    if outcome == "rejected":
        assert result.retry_after == 2.0 and result.http_status == 429


async def test_a_lost_connection_is_a_failed_request() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with trio.fail_after(10):
        async with client(refuse) as http:
            result = await stream_request(http, "completions", MODEL, "x", 4, 0)
    assert result.outcome == "failed" and "ConnectError" in (result.error or "")


async def test_counting_falls_back_to_one_token_on_an_older_node() -> None:
    node = FakeNode(refuse_count_only=True)
    with trio.fail_after(10):
        async with node.client() as http:
            count = make_counter(http, "completions", MODEL)
            assert await count("1. the river") == bpe_like("1. the river")
            assert await count("2. the") == bpe_like("2. the")


async def test_check_node_names_the_problem() -> None:
    node = FakeNode()
    with trio.fail_after(10):
        async with node.client() as http:
            assert await check_node(http, MODEL) == MODEL
            with pytest.raises(BenchError, match="no such model"):
                await check_node(http, "nope")

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("connection refused", request=request)

        async with client(refuse) as http:
            with pytest.raises(BenchError, match="cannot reach"):
                await check_node(http, MODEL)
        # A keyed node asked without its key: the node's message and how to give one.
        refused = b'{"error": {"message": "No API key given", "code": "invalid_api_key"}}'
        async with client(streaming(refused, 401)) as http:
            with pytest.raises(BenchError, match=r"HTTP 401: No API key given.*--api-key KEY"):
                await check_node(http, MODEL)
        # A server without exo's /models (another OpenAI server): the requests will tell.
        async with client(streaming(b'{"error": {"message": "unknown route"}}', 404)) as http:
            assert await check_node(http, "other") == "other"
