"""OpenAI's legacy `POST /v1/completions`: raw text in, text out, no chat template.

Clients still use it for plain continuation and fill-in tools. The prompt goes to the
model as it is (`GenerateRequest.text`). As at OpenAI, `max_tokens` defaults to 16 here,
and 0 is allowed: the prompt is counted (`usage.prompt_tokens`) and nothing generated,
which is how `exo bench` sizes a prompt to the token without paying for a prefill.
"""

from __future__ import annotations

import secrets
from typing import Any

from attrs import evolve, frozen
from msgspec import UNSET, UnsetType
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend, BackendError, InvalidRequest, lookup_model
from exo.api.clock import ApiClock
from exo.api.errors import as_backend_error, backend_error_response, json_response
from exo.api.logprobs import completion_logprobs
from exo.api.openai import error_payload_for
from exo.api.openai_request import HINTS, CompletionRequest
from exo.api.openai_response import TextChoice, TextFinish, Usage, finish_of, plain
from exo.api.openai_response import TextCompletion as TextCompletionObject
from exo.api.streaming import (
    SSE_CONTENT_TYPE,
    SSE_DONE,
    SSE_HEADERS,
    GenerationStream,
    sse_event,
    streamed_response,
    whole_generation,
)
from exo.api.typed_body import convert_body
from exo.api.validation import decode_json_body
from exo.engine.protocol import Finished, SamplingParams, TokenOut

DEFAULT_MAX_TOKENS = 16


@frozen
class TextCompletion:
    """A checked `POST /v1/completions` body, as the backend takes it."""

    model: str
    prompt: str
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False


def parse_completion_request(body: object) -> TextCompletion:
    """A checked completions body; raises InvalidRequest naming the field."""
    asked = convert_body(body, CompletionRequest, HINTS)
    max_tokens = DEFAULT_MAX_TOKENS if asked.max_tokens is None else asked.max_tokens
    params = evolve(asked.sampling(), max_tokens=max_tokens, logprobs=asked.logprobs)
    return TextCompletion(asked.model, asked.text, params, bool(asked.stream), asked.include_usage)


def new_completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


@frozen
class _TextChunks:
    completion_id: str
    created: int
    model: str

    def body(
        self,
        text: str,
        reason: TextFinish | None,
        logprobs: dict[str, Any] | None,
        usage: Usage | UnsetType = UNSET,
    ) -> Any:
        choice = TextChoice(text, 0, logprobs, reason)
        kind = "text_completion"
        return plain(
            TextCompletionObject(
                self.completion_id, kind, self.created, self.model, [choice], usage
            )
        )


class CompletionSse:
    """`text_completion` objects as server-sent events, one per piece of text."""

    def __init__(self, completion: TextCompletion, created: int) -> None:
        self._chunks = _TextChunks(new_completion_id(), created, completion.model)
        self._logprobs = completion.params.logprobs is not None
        self._include_usage = completion.include_usage
        self._sent = 0  # characters so far, for `text_offset`

    def start(self) -> list[bytes]:
        return []

    def token(self, chunk: TokenOut) -> list[bytes]:
        if not chunk.text and not (self._logprobs and chunk.logprobs):
            return []
        logprobs = completion_logprobs([chunk], self._sent) if self._logprobs else None
        self._sent += len(chunk.text)
        return [sse_event(self._chunks.body(chunk.text, None, logprobs))]

    def finish(self, finished: Finished) -> list[bytes]:
        usage = Usage.of(finished) if self._include_usage else UNSET
        last = self._chunks.body("", finish_of(finished), None, usage)
        return [sse_event(last), SSE_DONE]

    def error(self, error: Exception) -> list[bytes]:
        return [sse_event(error_payload_for(error)), SSE_DONE]


def register_completions(app: QuartTrio, backend: Backend, clock: ApiClock) -> None:
    """Add `POST /v1/completions`."""

    @app.post("/v1/completions")
    async def completions() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            completion = parse_completion_request(decode_json_body(raw))
        except InvalidRequest as error:
            return backend_error_response(error)
        found = await lookup_model(backend, completion.model)
        if isinstance(found, BackendError):
            return backend_error_response(found)
        if completion.stream:
            body = GenerationStream(
                backend,
                completion.model,
                (),
                completion.params,
                CompletionSse(completion, int(clock.wall())),
                text=completion.prompt,
            )
            return await streamed_response(
                body, backend_error_response, SSE_CONTENT_TYPE, SSE_HEADERS
            )
        try:
            whole = await whole_generation(
                backend, completion.model, (), completion.params, text=completion.prompt
            )
        except Exception as error:
            backend_error = as_backend_error(error)
            if backend_error is None:
                raise
            return backend_error_response(backend_error)
        chunks = _TextChunks(new_completion_id(), int(clock.wall()), completion.model)
        logprobs = (
            completion_logprobs(whole.chunks) if completion.params.logprobs is not None else None
        )
        finished = whole.finished
        body = chunks.body(whole.text, finish_of(finished), logprobs, Usage.of(finished))
        return json_response(body)
