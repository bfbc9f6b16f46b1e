"""A streamed generation as an HTTP response body, for any dialect.

`GenerationStream` owns the backend's generation and its lifetime; a `StreamFormat` turns
its start, tokens, finish and errors into the dialect's bytes (OpenAI's server-sent
events, Ollama's NDJSON lines).

Quart sends a body as `async with body: async for data in body: send(data)`, so the
backend's generation is entered in `__aenter__` and left in `__aexit__` (or as soon as it
finishes), properly nested around quart's sends in the request task. An async generator
yielding from inside `async with backend.generate(...)` would instead leave the backend's
scopes open while quart runs between chunks: if the backend keeps a nursery there and a
task in it fails, the cancellation lands in quart's code, outside the generator. When the
client goes away, quart-trio cancels the request task: the Cancelled leaves through
`__aexit__` (or `_pull`), which cancels the generation on the runner straight away.

A route first calls `begin`, which enters the generation and waits for its first chunk:
a failure before any token (an overloaded instance, a prompt too long for the context,
no instance ready in time) is then answered with its own HTTP status and headers
(429 with `Retry-After`, 400, 503) in the dialect's error shape, as clients expect of a
request that was never accepted. Errors after that become the format's error bytes:
the 200 status and headers are on the wire by then. Entering in the route and leaving in
the body is safe because the backend keeps no cancel scope open across its yield; a
stream whose body is never entered (the client left in between) is closed by Trio's
async-generator finalizer, which cancels the request on the runner.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol

from attrs import frozen
from quart.wrappers.response import ResponseBody
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend, BackendError, Chunk, GenerationFailed
from exo.api.errors import as_backend_error, dumps
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut, Tool

UNFINISHED = "The generation ended without finishing."


# Server-sent events, as every SSE dialect (OpenAI's, Responses', Anthropic's) sends them.
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # Tells nginx-style reverse proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
SSE_DONE = b"data: [DONE]\n\n"


def sse_event(data: Any) -> bytes:
    return f"data: {dumps(data)}\n\n".encode()


def named_sse_event(data: Mapping[str, Any]) -> bytes:
    """An event named after its payload's `type`, as Anthropic and the Responses API send
    them."""
    return f"event: {data['type']}\ndata: {dumps(data)}\n\n".encode()


def check_finish(finished: Finished | None) -> Finished:
    """The generation's end, or the error a client should get instead."""
    if finished is None:
        raise BackendError(UNFINISHED)
    if finished.finish_reason == "cancelled":
        raise GenerationFailed("The generation was cancelled before it finished.")
    return finished


@frozen
class Whole:
    """A generation that was not streamed: its text, its chunks, and how it ended."""

    text: str
    chunks: tuple[TokenOut, ...]
    finished: Finished


async def whole_generation(
    backend: Backend,
    model: str,
    messages: tuple[ChatMessage, ...],
    params: SamplingParams,
    tools: tuple[Tool, ...] = (),
    text: str | None = None,
) -> Whole:
    """The whole reply of a generation that is not streamed, and how it ended."""
    chunks: list[TokenOut] = []
    finished: Finished | None = None
    async with backend.generate(model, messages, params, tools, text) as stream:
        async for item in stream:
            if isinstance(item, TokenOut):
                chunks.append(item)
            else:
                finished = item
                break
    return Whole("".join(c.text for c in chunks), tuple(chunks), check_finish(finished))


class StreamFormat(Protocol):
    def start(self) -> list[bytes]: ...

    def token(self, chunk: TokenOut) -> list[bytes]: ...

    def finish(self, finished: Finished) -> list[bytes]: ...

    def error(self, error: Exception) -> list[bytes]: ...


class GenerationStream(ResponseBody):
    """The body of one streamed generation, in the bytes of `form`."""

    def __init__(
        self,
        backend: Backend,
        model: str,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        form: StreamFormat,
        tools: tuple[Tool, ...] = (),
        text: str | None = None,
    ) -> None:
        self._backend = backend
        self._request = (model, messages, params, tools, text)
        self._form = form
        self._generation: AbstractAsyncContextManager[AsyncIterator[Chunk]] | None = None
        self._chunks: AsyncIterator[Chunk] | None = None
        self._pending: deque[bytes] = deque(form.start())
        self._ended = False
        self._begun = False
        # The backend error that ended the stream, when it came before any token.
        self._early_error: BackendError | None = None
        self._tokens = 0

    async def begin(self) -> BackendError | None:
        """Enter the generation and wait for its first chunk. A backend error before any
        token is returned (and the stream is spent) for the route to answer with its
        status; anything later streams as the format's error bytes."""
        self._begun = True
        try:
            generation = self._backend.generate(*self._request)
            self._chunks = await generation.__aenter__()
        except BackendError as error:
            self._ended = True
            return error
        except Exception as error:
            self._end_with_error(error)
            return None
        self._generation = generation
        started = len(self._pending)
        await self._pull()
        early = self._early_error
        if early is not None and len(self._pending) > started:
            # Nothing was sent yet: the error gets its own status instead of these bytes.
            self._pending.clear()
            return early
        return None

    async def __aenter__(self) -> GenerationStream:
        if not self._begun:
            await self.begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._leave(exc_type, exc_value, tb)

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            await self._pull()
        return self._pending.popleft()

    async def _leave(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> bool:
        """Leave the backend's context (once); True if it suppressed the exception."""
        generation, self._generation = self._generation, None
        if generation is None:
            return False
        return bool(await generation.__aexit__(exc_type, exc_value, tb))

    async def _pull(self) -> None:
        """Wait for the next chunk from the backend and queue its events."""
        assert self._chunks is not None
        try:
            item = await anext(self._chunks, None)
        except BaseException as error:
            # Let the backend's context see the error, exactly as `async with` would. That
            # includes Cancelled: if it came from a scope inside the backend (its nursery
            # caught a failing task), leaving turns it into the backend's own error, which
            # the client should hear about; the request's own cancellation propagates.
            try:
                suppressed = await self._leave(type(error), error, error.__traceback__)
            except Exception as replaced:
                self._end_with_error(replaced)
                return
            if not isinstance(error, Exception):
                if suppressed:  # a backend swallowing its own cancellation: no Finished
                    self._end_with_error(BackendError(UNFINISHED))
                    return
                raise
            self._end_with_error(error)
            return
        if isinstance(item, TokenOut):
            self._tokens += 1
            self._pending.extend(self._form.token(item))
            return
        try:
            await self._leave()
            finished = check_finish(item)
        except Exception as error:
            self._end_with_error(error)
            return
        self._pending.extend(self._form.finish(finished))
        self._ended = True

    def _end_with_error(self, error: Exception) -> None:
        known = as_backend_error(error)
        if known is not None and self._tokens == 0:
            self._early_error = known
        self._pending.extend(self._form.error(error))
        self._ended = True


async def streamed_response(
    body: GenerationStream,
    error_response: Callable[[BackendError], TrioResponse],
    content_type: str,
    headers: dict[str, str] | None = None,
) -> TrioResponse:
    """A route's answer to a streamed request: 200 with `body` once its first chunk has
    come, or the dialect's error response for a failure before it (`begin`)."""
    early = await body.begin()
    if early is not None:
        return error_response(early)
    return TrioResponse(body, status=200, headers=headers, content_type=content_type)
