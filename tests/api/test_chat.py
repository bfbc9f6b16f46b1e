"""Chat completions through the official `openai` client and raw SSE, against the real server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import trio
from openai.types.chat import ChatCompletionMessageParam

from exo.api.backend import GenerationFailed, InvalidRequest, Unavailable, UnknownModel
from exo.engine.protocol import ChatMessage, SamplingParams

from .fakes import MODEL, Block, FakeBackend, Raise, tokens
from .helpers import (
    assert_error_shape,
    is_cancellation,
    openai_stream_gc,
    post_bytes,
    raw_request,
    running,
    sse_data,
)

CHAT = "/v1/chat/completions"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def client_for(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def test_non_streamed_completion() -> None:
    backend = FakeBackend(tokens("Hel", "lo", "!", prompt_tokens=5))
    with trio.fail_after(10):
        async with running(backend) as url:
            client = client_for(url)
            completion = await client.chat.completions.create(
                model=MODEL,
                messages=[
                    {"role": "developer", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    },
                ],
                temperature=0,
                top_p=0.5,
                max_completion_tokens=16,
                stop=["\n\n"],
                seed=42,
            )
            await client.close()
    assert completion.id.startswith("chatcmpl-") and len(completion.id) > len("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.created > 0
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello!"
    # Sent, not defaulted by the client: OpenAI's schema requires it.
    assert "refusal" in choice.message.model_fields_set and choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 3)
    assert completion.usage.total_tokens == 8

    [call] = backend.calls
    assert call.model == MODEL
    assert call.messages == (ChatMessage("system", "be brief"), ChatMessage("user", "a\nb"))
    assert call.params == SamplingParams(
        temperature=0.0, top_p=0.5, max_tokens=16, stop=("\n\n",), seed=42
    )
    assert backend.exit_errors == [None]


async def test_defaults_are_openais() -> None:
    backend = FakeBackend(tokens("x"))
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.post(
                CHAT, json={"model": MODEL, "messages": USER, "stop": "END", "max_tokens": 3}
            )
    assert response.status_code == 200
    assert backend.calls[0].params == SamplingParams(
        temperature=1.0, top_p=1.0, max_tokens=3, stop=("END",), seed=None
    )


async def test_length_finish_reason() -> None:
    backend = FakeBackend(tokens("a", "b", finish="length"))
    with trio.fail_after(10):
        async with running(backend) as url:
            client = client_for(url)
            completion = await client.chat.completions.create(model=MODEL, messages=USER)
            await client.close()
    assert completion.choices[0].finish_reason == "length"


@openai_stream_gc
async def test_streamed_completion_with_openai_client() -> None:
    backend = FakeBackend(tokens("Hel", "lo", "!"))
    with trio.fail_after(10):
        async with running(backend) as url:
            client = client_for(url)
            stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
            chunks = [chunk async for chunk in stream]
            await client.close()
    assert len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == "Hello!"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert backend.exit_errors == [None]


@pytest.mark.parametrize("hold_nursery", [False, True], ids=["plain", "backend-nursery"])
async def test_streamed_sse_shape_with_usage(hold_nursery: bool) -> None:
    backend = FakeBackend(tokens("a", "b", prompt_tokens=4), hold_nursery=hold_nursery)
    request = {
        "model": MODEL,
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.post(CHAT, json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    role, a, b, final, usage = events[:-1]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [a["choices"][0]["delta"], b["choices"][0]["delta"]] == [
        {"content": "a"},
        {"content": "b"},
    ]
    assert final["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert all(event["usage"] is None for event in (role, a, b, final))


@openai_stream_gc
async def test_include_usage_through_openai_client() -> None:
    backend = FakeBackend(tokens("a", prompt_tokens=2))
    with trio.fail_after(10):
        async with running(backend) as url:
            client = client_for(url)
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=USER,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            await client.close()
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 3


@pytest.mark.parametrize(
    ("error", "type_"),
    [
        (GenerationFailed("the runner died"), "runner_error"),
        (InvalidRequest("prompt too long", "messages"), "invalid_request_error"),
        (RuntimeError("boom"), "server_error"),
    ],
    ids=["generation-failed", "invalid-request", "unexpected"],
)
@pytest.mark.parametrize("hold_nursery", [False, True], ids=["plain", "backend-nursery"])
async def test_error_mid_stream_sends_error_event_then_done(
    error: Exception, type_: str, hold_nursery: bool
) -> None:
    backend = FakeBackend([*tokens("a")[:1], Raise(error)], hold_nursery=hold_nursery)
    request = {"model": MODEL, "messages": USER, "stream": True}
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.post(CHAT, json=request)
    assert response.status_code == 200
    events = sse_data(response.text)
    assert events[1]["choices"][0]["delta"] == {"content": "a"}
    assert events[-1] == "[DONE]"
    assert_error_shape(events[-2], type=type_, param=getattr(error, "param", None))
    if type_ == "server_error":
        assert "boom" not in response.text
    assert len(events) == 4
    assert backend.exited.is_set()


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "non-streamed"])
async def test_failure_inside_backend_nursery_reaches_client(stream: bool) -> None:
    # The backend's own background task fails while the API waits for the next token: the
    # backend's nursery cancels the wait and raises on exit; the client gets that error.
    backend = FakeBackend(
        [*tokens("first")[:1], Block()],
        hold_nursery=True,
        background_error=GenerationFailed("the runner died"),
    )
    request = post_bytes(CHAT, {"model": MODEL, "messages": USER, "stream": stream})
    with trio.fail_after(10):
        async with running(backend) as url, raw_request(url, request) as response:
            if stream:
                await response.next_event()
                await response.next_event()
            else:
                await backend.entered.wait()
            backend.fail_background.set()
            rest = (await response.body()).decode()
    if stream:
        assert response.status == 200
        events = sse_data(rest)
        assert events[-1] == "[DONE]"
        assert_error_shape(events[-2], type="runner_error")
    else:
        assert response.status == 503
        assert_error_shape(json.loads(rest), type="runner_error")


@openai_stream_gc
async def test_error_mid_stream_raises_in_openai_client() -> None:
    backend = FakeBackend([*tokens("a")[:1], Raise(GenerationFailed("the runner died"))])
    with trio.fail_after(10):
        async with running(backend) as url:
            client = client_for(url)
            stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
            with pytest.raises(openai.APIError, match="the runner died"):
                async for _ in stream:
                    pass
            await client.close()


async def test_entry_error_when_streaming_gets_its_own_status() -> None:
    # The route waits for the first chunk before it answers 200, so a failure before any
    # token is an ordinary error response (as a client expects of a refused request).
    backend = FakeBackend(tokens("a"), entry_error=Unavailable("no instance is ready"))
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.post(
                CHAT, json={"model": MODEL, "messages": USER, "stream": True}
            )
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    assert_error_shape(response.json(), type="unavailable_error")


async def test_cancelled_finish_never_reaches_client() -> None:
    backend = FakeBackend(tokens("a", finish="cancelled"))
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            plain = await http.post(CHAT, json={"model": MODEL, "messages": USER})
            streamed = await http.post(
                CHAT, json={"model": MODEL, "messages": USER, "stream": True}
            )
    assert plain.status_code == 503
    assert_error_shape(plain.json(), type="runner_error")
    assert "cancelled" not in json.dumps(
        [e for e in sse_data(streamed.text) if isinstance(e, dict) and "choices" in e]
    )
    assert_error_shape(sse_data(streamed.text)[-2], type="runner_error")


async def test_tokens_are_flushed_as_they_are_produced() -> None:
    # The generation hangs after the first token: the client must still see that token.
    backend = FakeBackend([*tokens("first")[:1], Block()])
    request = post_bytes(CHAT, {"model": MODEL, "messages": USER, "stream": True})
    with trio.fail_after(10):
        async with running(backend) as url, raw_request(url, request) as response:
            role = await response.next_event()
            first = await response.next_event()
    assert response.status == 200
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["delta"] == {"content": "first"}


@pytest.mark.parametrize("hold_nursery", [False, True], ids=["plain", "backend-nursery"])
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "non-streamed"])
async def test_client_disconnect_cancels_generation(stream: bool, hold_nursery: bool) -> None:
    backend = FakeBackend([*tokens("first")[:1], Block()], hold_nursery=hold_nursery)
    request = post_bytes(CHAT, {"model": MODEL, "messages": USER, "stream": stream})
    with trio.fail_after(10):
        async with running(backend) as url:
            async with raw_request(url, request) as response:
                if stream:
                    await response.next_event()
                    assert (await response.next_event())["choices"][0]["delta"][
                        "content"
                    ] == "first"
                else:
                    await backend.entered.wait()
                assert not backend.exited.is_set()
            # Leaving the block closed the connection mid-response; the server must notice
            # and leave the backend's context promptly.
            with trio.fail_after(2):
                await backend.exited.wait()
    [exit_error] = backend.exit_errors
    assert is_cancellation(exit_error), exit_error


async def test_openai_client_sees_typed_errors() -> None:
    backend = FakeBackend(tokens("a"), entry_error=UnknownModel("nope"))
    with trio.fail_after(10):
        async with running(backend) as url:
            client = client_for(url)
            with pytest.raises(openai.NotFoundError) as not_found:
                await client.chat.completions.create(model="nope", messages=USER)
            with pytest.raises(openai.BadRequestError) as bad:
                await client.chat.completions.create(model=MODEL, messages=USER, temperature=3)
            await client.close()
    assert not_found.value.code == "model_not_found"
    assert bad.value.param == "temperature"
    assert bad.value.type == "invalid_request_error"
