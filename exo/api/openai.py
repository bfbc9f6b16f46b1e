"""The OpenAI dialect: `/v1/models` and `/v1/chat/completions`, streamed or not.

Request bodies are checked (`openai_request.py`) before the backend is asked for anything;
each violation is a 400 naming the offending field in `param`. Streaming uses server-sent
events with one `chat.completion.chunk` per token, flushed as it is produced.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from datetime import datetime
from typing import Any

from attrs import frozen
from msgspec import UNSET, UnsetType
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import (
    Backend,
    BackendError,
    InvalidRequest,
    UnknownModel,
    lookup_model,
)
from exo.api.clock import ApiClock
from exo.api.errors import (
    as_backend_error,
    backend_error_payload,
    backend_error_response,
    json_response,
    server_error_payload,
)
from exo.api.logprobs import chat_logprobs
from exo.api.openai_request import ChatRequest, parse_chat_request
from exo.api.openai_response import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatFinish,
    ChunkChoice,
    FunctionCall,
    Model,
    ModelList,
    ToolCallDelta,
    Usage,
    finish_of,
    plain,
)
from exo.api.openai_response import ToolCall as TypedToolCall
from exo.api.streaming import (
    SSE_CONTENT_TYPE,
    SSE_DONE,
    SSE_HEADERS,
    GenerationStream,
    sse_event,
    streamed_response,
    whole_generation,
)
from exo.api.tool_calls import (
    CallParser,
)
from exo.api.validation import (
    decode_json_body,
)
from exo.engine.protocol import Finished, TokenOut, ToolCall
from exo.models.cards import ModelCard

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Responses


def model_object(card: ModelCard) -> Model:
    """A model as OpenAI lists it: `created` is when the hub last changed the repo (0 when
    unknown), `owned_by` the repo's owner (exo for the bundled and local models)."""
    created = 0
    if card.modified:
        with contextlib.suppress(ValueError):
            created = int(datetime.fromisoformat(card.modified).timestamp())
    owner = card.location.split("/", 1)[0] if card.source == "hub" else "exo"
    return Model(
        card.model_id, "model", max(created, 0), owner, card.display_name, card.context_length
    )


def alias_object(alias: str, repo: str) -> Model:
    """A catalogue alias not read from the hub yet: asking for it fetches its repo."""
    return Model(alias, "model", 0, repo.split("/")[0], repo)


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def typed_call(call: ToolCall) -> TypedToolCall:
    return TypedToolCall(call.id, "function", FunctionCall(call.name, call.arguments))


def typed_call_delta(index: int, call: ToolCall) -> ToolCallDelta:
    return ToolCallDelta(index, call.id, "function", FunctionCall(call.name, call.arguments))


@frozen
class _ChunkMaker:
    completion_id: str
    created: int
    model: str
    include_usage: bool

    def chunk(
        self,
        delta: ChatDelta,
        finish_reason: ChatFinish | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> Any:
        choice = ChunkChoice(0, delta, logprobs, finish_reason)
        usage: Usage | UnsetType | None = None if self.include_usage else UNSET
        return plain(self._chunk([choice], usage))

    def usage_chunk(self, finished: Finished) -> Any:
        return plain(self._chunk([], Usage.of(finished)))

    def _chunk(
        self, choices: list[ChunkChoice], usage: Usage | UnsetType | None
    ) -> ChatCompletionChunk:
        kind = "chat.completion.chunk"
        return ChatCompletionChunk(
            self.completion_id, kind, self.created, self.model, choices, usage
        )


def error_payload_for(error: Exception) -> dict[str, Any]:
    """The OpenAI error body for a failure after a stream's 200 went out."""
    backend_error = as_backend_error(error)
    if backend_error is not None:
        return backend_error_payload(backend_error)
    log.error("unexpected error while streaming a completion", exc_info=error)
    return server_error_payload()


def _finish_reason(finished: Finished, parser: CallParser | None) -> ChatFinish:
    if parser is not None and parser.calls and finished.finish_reason == "stop":
        return "tool_calls"
    return finish_of(finished)


def _parser_for(chat: ChatRequest) -> CallParser | None:
    tools = chat.offered_tools
    return CallParser(tools, chat.tool_choice.forced) if tools else None


class SseFormat:
    """OpenAI's chat-completion chunks as server-sent events, ending with `[DONE]`.

    With tools offered, text goes through a `CallParser`: each call is sent as one
    `tool_calls` delta as soon as it is complete, and tagged call text is never shown.
    """

    def __init__(self, chat: ChatRequest, created: int) -> None:
        self._maker = _ChunkMaker(new_completion_id(), created, chat.model, chat.include_usage)
        self._include_usage = chat.include_usage
        self._logprobs = chat.params.logprobs is not None
        self._parser = _parser_for(chat)
        self._calls_sent = 0

    def start(self) -> list[bytes]:
        return [sse_event(self._maker.chunk(ChatDelta(role="assistant", content="")))]

    def token(self, chunk: TokenOut) -> list[bytes]:
        text, calls = chunk.text, []
        if self._parser is not None:
            text, calls = self._parser.feed(text)
        events: list[bytes] = []
        if text or (self._logprobs and chunk.logprobs):
            logprobs = chat_logprobs([chunk]) if self._logprobs else None
            events.append(sse_event(self._maker.chunk(ChatDelta(content=text), logprobs=logprobs)))
        return events + self._call_events(calls)

    def _call_events(self, calls: list[ToolCall]) -> list[bytes]:
        events = []
        for call in calls:
            delta = ChatDelta(tool_calls=[typed_call_delta(self._calls_sent, call)])
            events.append(sse_event(self._maker.chunk(delta)))
            self._calls_sent += 1
        return events

    def finish(self, finished: Finished) -> list[bytes]:
        events: list[bytes] = []
        if self._parser is not None:
            text, calls = self._parser.finish()
            if text:
                events.append(sse_event(self._maker.chunk(ChatDelta(content=text))))
            events += self._call_events(calls)
        reason = _finish_reason(finished, self._parser)
        events.append(sse_event(self._maker.chunk(ChatDelta(), reason)))
        if self._include_usage:
            events.append(sse_event(self._maker.usage_chunk(finished)))
        return [*events, SSE_DONE]

    def error(self, error: Exception) -> list[bytes]:
        return [sse_event(error_payload_for(error)), SSE_DONE]


async def complete_chat(backend: Backend, chat: ChatRequest, created: int) -> ChatCompletion:
    """A whole `chat.completion` (`created`: when it was asked for); raises BackendError."""
    whole = await whole_generation(
        backend, chat.model, chat.messages, chat.params, chat.offered_tools
    )
    content: str | None = whole.text
    calls: list[TypedToolCall] | UnsetType = UNSET
    parser = _parser_for(chat)
    if parser is not None:
        shown, _ = parser.feed(whole.text)
        rest, _ = parser.finish()
        text = shown + rest
        content = (text.strip() or None) if parser.calls else text
        if parser.calls:
            calls = [typed_call(c) for c in parser.calls]
    logprobs = chat_logprobs(whole.chunks) if chat.params.logprobs is not None else None
    reason = _finish_reason(whole.finished, parser)
    message = AssistantMessage("assistant", content, None, calls)
    return ChatCompletion(
        new_completion_id(),
        "chat.completion",
        created,
        chat.model,
        [ChatChoice(0, message, logprobs, reason)],
        Usage.of(whole.finished),
    )


# ---------------------------------------------------------------------------------------------
# Routes


def register_openai(app: QuartTrio, backend: Backend, clock: ApiClock) -> None:
    """Add `GET /v1/models`, `GET /v1/models/<id>` and `POST /v1/chat/completions`."""

    @app.get("/v1/models")
    async def list_models() -> TrioResponse:
        data = [model_object(card) for card in backend.models()]
        data += [
            alias_object(view.id, view.alias_of)
            for view in backend.model_views()
            if view.card is None and isinstance(view.alias_of, str)
        ]
        return json_response(plain(ModelList("list", data)))

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> TrioResponse:
        card = next((c for c in backend.models() if c.model_id == model_id), None)
        if card is None:
            return backend_error_response(UnknownModel(model_id))
        return json_response(plain(model_object(card)))

    @app.post("/v1/chat/completions")
    async def chat_completions() -> TrioResponse:
        # get_data raises RequestEntityTooLarge (413) past MAX_CONTENT_LENGTH.
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            chat = parse_chat_request(decode_json_body(raw))
        except InvalidRequest as error:
            return backend_error_response(error)
        found = await lookup_model(backend, chat.model)
        if isinstance(found, BackendError):
            return backend_error_response(found)

        if chat.stream:
            body = GenerationStream(
                backend,
                chat.model,
                chat.messages,
                chat.params,
                SseFormat(chat, int(clock.wall())),
                chat.offered_tools,
            )
            return await streamed_response(
                body, backend_error_response, SSE_CONTENT_TYPE, SSE_HEADERS
            )
        try:
            completion = await complete_chat(backend, chat, int(clock.wall()))
        except Exception as error:
            backend_error = as_backend_error(error)
            if backend_error is None:
                raise  # the app's catch-all logs it and answers a JSON 500
            return backend_error_response(backend_error)
        return json_response(plain(completion))
