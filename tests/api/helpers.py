"""Start the real hypercorn server on a free port and talk to it."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import h11
import pytest
import trio

from exo.api.app import create_app, serve
from exo.api.backend import Backend

NODE_LABEL = "test-node"


@asynccontextmanager
async def running(backend: Backend, **app_options: Any) -> AsyncIterator[str]:
    """Serve `backend` on 127.0.0.1:<free port>; yields the base URL; stops on exit.
    `app_options` go to `create_app` (api_keys, cors_origins)."""
    app = create_app(backend, node_label=NODE_LABEL, **app_options)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        try:
            yield f"http://{host}:{port}"
        finally:
            nursery.cancel_scope.cancel()


@contextmanager
def running_in_thread(backend: Backend, **app_options: Any) -> Iterator[str]:
    """`running` for synchronous clients (requests, schemathesis, `exo status`): the server
    gets its own Trio loop in a thread; yields the base URL; stops on exit."""
    started: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.Event] | BaseException]
    started = queue.Queue()

    async def main() -> None:
        stop = trio.Event()
        try:
            async with running(backend, **app_options) as url:
                started.put((url, trio.lowlevel.current_trio_token(), stop))
                await stop.wait()
        except BaseException as error:
            started.put(error)
            raise

    thread = threading.Thread(target=trio.run, args=(main,), name="exo-test-server")
    thread.start()
    outcome = started.get(timeout=10)
    if isinstance(outcome, BaseException):
        thread.join()
        raise RuntimeError("the test server did not start") from outcome
    url, token, stop = outcome
    try:
        yield url
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=10)
        assert not thread.is_alive(), "the test server did not stop"


def sse_data(body: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded except the final `[DONE]`."""
    events: list[Any] = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def typed_events(body: str) -> list[dict[str, Any]]:
    """The events of a Responses SSE body; checks each `event:` line names its `type`."""
    events: list[dict[str, Any]] = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}", block
        events.append(data)
    return events


def assert_error_shape(
    body: Any, *, type: str, param: str | None = None, code: str | None = None
) -> None:
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == type, error
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error


class RawResponse:
    """Reads one HTTP/1.1 response off a socket, piece by piece, with h11.

    httpx's streaming iterators are async generators that are left unclosed when a caller
    stops early, which Trio reports as a ResourceWarning; this reader has none.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        # Put the client side in the state it would be after sending a request.
        self.conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
        self.status = 0
        self.headers: dict[str, str] = {}
        self.done = False
        self._buffer = ""

    async def next_data(self) -> bytes | None:
        """The next body piece; None once the response (or the connection) has ended."""
        while not self.done:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.done = True
        return None

    async def body(self) -> bytes:
        """The rest of the body (including anything buffered by next_event)."""
        parts = bytearray(self._buffer.encode())
        self._buffer = ""
        while (data := await self.next_data()) is not None:
            parts += data
        return bytes(parts)

    async def next_event(self) -> Any:
        """The next SSE `data:` payload (JSON-decoded unless `[DONE]`); None at the end."""
        while "\n\n" not in self._buffer:
            data = await self.next_data()
            if data is None:
                return None
            self._buffer += data.decode()
        block, self._buffer = self._buffer.split("\n\n", 1)
        [event] = sse_data(block + "\n\n")
        return event


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def post_bytes(path: str, payload: Any) -> bytes:
    data = json.dumps(payload).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


@asynccontextmanager
async def raw_request(url: str, request: bytes) -> AsyncIterator[RawResponse]:
    """Send raw bytes on a fresh connection; the connection closes when the block exits."""
    stream = await trio.open_tcp_stream(*host_port(url))
    async with stream:
        await stream.send_all(request)
        yield RawResponse(stream)


async def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; return the whole response (status, headers, body).

    For cases an HTTP client cannot express cleanly, like a body the server refuses before
    it has been sent.
    """
    async with raw_request(url, request) as response:
        body = await response.body()
        return response.status, response.headers, body


# The openai client stops iterating its SSE generators at `[DONE]` (or an error event)
# without closing them; Trio's finalizer then warns (ResourceWarning, an error under this
# project's filterwarnings) when they are garbage collected. Not the server's doing.
openai_stream_gc = pytest.mark.filterwarnings(
    r"ignore:Async generator '(openai|httpx2|httpcore2)\.:ResourceWarning"
)


def is_cancellation(error: BaseException | None) -> bool:
    """True for trio.Cancelled, or a group of nothing but Cancelled."""
    if isinstance(error, BaseExceptionGroup):
        return error.split(trio.Cancelled)[1] is None
    return isinstance(error, trio.Cancelled)
