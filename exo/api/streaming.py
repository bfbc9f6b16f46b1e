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

Errors (on entry or mid-stream) become the format's error bytes: the 200 status and
headers are already on the wire by then.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol

from attrs import frozen
from quart.wrappers.response import ResponseBody

from exo.api.backend import Backend, BackendError, Chunk, GenerationFailed
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut, Tool

UNFINISHED = "The generation ended without finishing."


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

    async def __aenter__(self) -> GenerationStream:
        try:
            generation = self._backend.generate(*self._request)
            self._chunks = await generation.__aenter__()
        except Exception as error:
            self._end_with_error(error)
        else:
            self._generation = generation
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
        self._pending.extend(self._form.error(error))
        self._ended = True
