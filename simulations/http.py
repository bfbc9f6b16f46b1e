"""Simulated HTTP clients: chats sent to a node's real API (hypercorn's HTTP/1.1 server and
the quart app, over simulated TCP) in each dialect, by httpcore, the HTTP client under
httpx, through a network backend of simulated sockets (as httpcore lets a backend be
injected). So a seed over links runs the request parsers, the dialects' encoders and
streams, keep-alive and connection loss, and judges what a client would have read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpcore
import trio
from attrs import frozen

from exo.models.cards import BUNDLED_MODEL
from simulations.sockets import SimHostSockets, SimStream

API_PORT = 52415
# The host the simulated clients run on: no partition ever separates it from a node.
CLIENT_ADDRESS = "10.1.0.1"
# Silence after which a client gives up on a connection the network left half-open.
HALF_OPEN_TIMEOUT = 15.0


def api_key(seed: int) -> str:
    """The key a seed's members serve their API with, and its clients send."""
    return f"sim-api-key-{seed}"


class ChatFailed(Exception):
    """The API answered with an error, or the connection broke: what a client would see."""


class Truncated(Exception):
    """A stream that ended cleanly without its end marker: a client would take a partial
    answer for a whole one."""


class SimNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's connections over the simulated TCP of one host. The clients ask for no
    timeouts (every op is bounded by the workload), so `timeout` is always None here."""

    def __init__(self, sockets: SimHostSockets) -> None:
        self._sockets = sockets

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            stream = await self._sockets.open_tcp_stream(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _SimNetworkStream(stream)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class _SimNetworkStream(httpcore.AsyncNetworkStream):
    """A client's connection. Where the network left it half-open (the server's end
    learned of the break, this one never will), a read gives up after `HALF_OPEN_TIMEOUT`
    of silence, as a real client's read timeout or TCP keepalive would: no server can
    answer there. Any other silence is waited out, so a server that never answers is a
    hung op, not a failed one."""

    def __init__(self, stream: SimStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            while True:
                with trio.move_on_after(HALF_OPEN_TIMEOUT):
                    return bytes(await self._stream.receive_some(max_bytes))
                if self._stream.incoming.lost:
                    raise httpcore.ReadTimeout(
                        f"no bytes for {HALF_OPEN_TIMEOUT:g} s on a half-open connection"
                    )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore.ReadError(str(exc) or "connection reset") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            await self._stream.send_all(buffer)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore.WriteError(str(exc) or "connection reset") from exc

    async def aclose(self) -> None:
        await self._stream.aclose()

    def get_extra_info(self, info: str) -> Any:
        return None


@frozen
class Dialect:
    """How one dialect asks for a chat, and how its answer is read back to plain text."""

    name: str
    path: str
    body: Callable[[str, int], dict[str, Any]]
    read: Callable[[list[str]], str]  # the reply's lines to its text


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _openai_whole(lines: list[str]) -> str:
    reply = json.loads("".join(lines))
    return str(reply["choices"][0]["message"]["content"] or "")


def _openai_stream(lines: list[str]) -> str:
    text: list[str] = []
    for data in _sse_data(lines):
        if data == "[DONE]":
            return "".join(text)
        chunk = json.loads(data)
        _raise_error(chunk.get("error"))
        text.extend(c["delta"].get("content") or "" for c in chunk["choices"])
    raise Truncated("no data: [DONE]")


def _anthropic_stream(lines: list[str]) -> str:
    text: list[str] = []
    for data in _sse_data(lines):
        event = json.loads(data)
        if event["type"] == "error":
            _raise_error(event["error"])
        if event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
            text.append(event["delta"]["text"])
        if event["type"] == "message_stop":
            return "".join(text)
    raise Truncated("no message_stop")


def _responses_stream(lines: list[str]) -> str:
    text: list[str] = []
    for data in _sse_data(lines):
        event = json.loads(data)
        if event["type"] == "error":
            _raise_error(event)
        if event["type"] == "response.output_text.delta":
            text.append(event["delta"])
        if event["type"] in ("response.completed", "response.incomplete"):  # incomplete: at
            return "".join(text)  # max_output_tokens
    raise Truncated("no response.completed or .incomplete")


def _ollama_stream(lines: list[str]) -> str:
    text: list[str] = []
    for line in lines:
        if not line:
            continue
        reply = json.loads(line)
        _raise_error(reply.get("error"))
        text.append(reply["message"]["content"])
        if reply["done"]:
            return "".join(text)
    raise Truncated("no line with done: true")


DIALECTS = (
    Dialect(
        "openai",
        "/v1/chat/completions",
        lambda text, n: {"model": BUNDLED_MODEL, "messages": _messages(text), "max_tokens": n},
        _openai_whole,
    ),
    Dialect(
        "openai-stream",
        "/v1/chat/completions",
        lambda text, n: {
            "model": BUNDLED_MODEL,
            "messages": _messages(text),
            "max_completion_tokens": n,
            "stream": True,
        },
        _openai_stream,
    ),
    Dialect(
        "anthropic",
        "/v1/messages",
        lambda text, n: {
            "model": BUNDLED_MODEL,
            "messages": _messages(text),
            "max_tokens": n,
            "stream": True,
        },
        _anthropic_stream,
    ),
    Dialect(
        "responses",
        "/v1/responses",
        lambda text, n: {
            "model": BUNDLED_MODEL,
            "input": text,
            "max_output_tokens": n,
            "stream": True,
        },
        _responses_stream,
    ),
    Dialect(
        "ollama",
        "/api/chat",
        lambda text, n: {
            "model": BUNDLED_MODEL,
            "messages": _messages(text),
            "options": {"num_predict": n},
        },
        _ollama_stream,
    ),
)


async def chat(
    pool: httpcore.AsyncConnectionPool,
    host: str,
    key: str,
    dialect: Dialect,
    text: str,
    max_tokens: int,
) -> str:
    """Send one chat to the API at `host` with `key` and read its whole answer, greedy
    (every dialect at temperature 0). ChatFailed for an error status, an error in the
    stream or a broken connection; Truncated for a stream cut short without one."""
    body = {**dialect.body(text, max_tokens), "temperature": 0}
    url = f"http://{host}:{API_PORT}{dialect.path}"
    headers = [(b"content-type", b"application/json"), *_key_header(dialect, key)]
    try:
        async with pool.stream(
            "POST", url, headers=headers, content=json.dumps(body).encode()
        ) as reply:
            body = b"".join([chunk async for chunk in reply.aiter_stream()]).decode()
            if reply.status != 200:
                raise ChatFailed(f"{reply.status} {_error_message(body)}")
            return dialect.read(body.splitlines())
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as exc:
        raise ChatFailed(f"{type(exc).__name__}: {exc}") from exc


def _key_header(dialect: Dialect, key: str) -> list[tuple[bytes, bytes]]:
    """The key as the dialect's clients send it: Anthropic's `x-api-key`, the others'
    bearer token."""
    if dialect.name == "anthropic":
        return [(b"x-api-key", key.encode())]
    return [(b"authorization", b"Bearer " + key.encode())]


def _sse_data(lines: list[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def _raise_error(error: Any) -> None:
    if error:
        raise ChatFailed(_message_of(error))


def _message_of(error: Any) -> str:
    """An error's `message` when it is an object (every dialect's shape), else itself."""
    return str(error.get("message", error) if isinstance(error, dict) else error)


def _error_message(text: str) -> str:
    """The message of an error body in any dialect's shape."""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:200]
    return _message_of(body.get("error", body) if isinstance(body, dict) else body)


def dialect_of(number: int) -> Dialect:
    """The dialect of a client's `number`th request: each in turn."""
    return DIALECTS[number % len(DIALECTS)]
