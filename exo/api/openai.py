"""The OpenAI dialect: `/v1/models` and `/v1/chat/completions`, streamed or not.

Request bodies are validated here, strictly, before the backend is asked for anything; each
violation is a 400 naming the offending field in `param`. Streaming uses server-sent events
with one `chat.completion.chunk` per token, flushed as it is produced.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from attrs import evolve, frozen
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
from exo.api.errors import (
    as_backend_error,
    backend_error_payload,
    backend_error_response,
    dumps,
    json_response,
    server_error_payload,
)
from exo.api.logprobs import chat_logprobs
from exo.api.openai_params import (
    parse_chat_logprobs,
    parse_response_format,
    parse_sampling,
)
from exo.api.streaming import GenerationStream, streamed_response, whole_generation
from exo.api.tool_calls import (
    CallParser,
    ToolChoice,
    call_delta,
    call_object,
    forced_call_schema,
    offered,
    parse_assistant_calls,
    parse_tool_choice,
    parse_tools,
)
from exo.api.validation import (
    decode_json_body,
    invalid,
    optional_positive_int,
)
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut, Tool, ToolCall
from exo.models.cards import ModelCard

log = logging.getLogger(__name__)

# Roles a client may send; `developer` is OpenAI's newer name for `system`.
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
# Text parts of a list-valued `content` are joined with this (as vLLM and llama.cpp do).
CONTENT_PART_SEPARATOR = "\n"

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # Tells nginx-style reverse proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
SSE_DONE = b"data: [DONE]\n\n"


NO_TOOLS = ToolChoice("none")


@frozen
class ChatRequest:
    """A validated `POST /v1/chat/completions` body."""

    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = NO_TOOLS

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        return offered(self.tools, self.tool_choice)


# ---------------------------------------------------------------------------------------------
# Validation


def _parse_content(value: object, role: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if isinstance(value, list) and value:
        texts: list[str] = []
        for j, part in enumerate(value):
            at = f"{where}[{j}]"
            if not isinstance(part, dict):
                raise invalid(f'\'{at}\' must be an object like {{"type": "text", ...}}.', at)
            if part.get("type") != "text":
                raise invalid(
                    f"'{at}.type' must be 'text'; got {part.get('type')!r} "
                    "(only text content is supported).",
                    f"{at}.type",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid(f"'{at}.text' must be a string.", f"{at}.text")
            texts.append(text)
        return CONTENT_PART_SEPARATOR.join(texts)
    raise invalid(f"'{where}' must be a string or a non-empty list of text parts.", where)


def parse_messages(value: object) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise invalid("'messages' must be a non-empty list of messages.", "messages")
    messages: list[ChatMessage] = []
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object with 'role' and 'content'.", where)
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}; got {role!r}.",
                f"{where}.role",
            )
        calls = (
            parse_assistant_calls(item.get("tool_calls"), f"{where}.tool_calls")
            if role == "assistant"
            else ()
        )
        content = item.get("content")
        if content is None and calls:
            content = ""
        call_id = item.get("tool_call_id")
        if call_id is not None and not isinstance(call_id, str):
            raise invalid(f"'{where}.tool_call_id' must be a string.", f"{where}.tool_call_id")
        messages.append(
            ChatMessage(
                role=ROLES[role],
                content=_parse_content(content, role, f"{where}.content"),
                tool_calls=calls,
                tool_call_id=call_id,
            )
        )
    return tuple(messages)


def parse_chat_request(body: object) -> ChatRequest:
    """Validate a decoded chat-completions body; raises InvalidRequest naming the field."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)

    model = parse_model(body)
    messages = parse_messages(body.get("messages"))

    sampling = parse_sampling(body)
    max_tokens = optional_positive_int(body, "max_tokens")
    max_completion_tokens = optional_positive_int(body, "max_completion_tokens")
    stream, include_usage = parse_stream(body)

    if body.get("functions") or body.get("function_call"):
        raise invalid(
            "The legacy 'functions' and 'function_call' are not supported; use 'tools'.",
            "functions",
        )
    tools = parse_tools(body.get("tools"))
    tool_choice = parse_tool_choice(body.get("tool_choice"), tools)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid("'parallel_tool_calls' must be a boolean.", "parallel_tool_calls")
    json_schema = parse_response_format(body.get("response_format"))
    if tool_choice.forced:
        if json_schema is not None:
            raise invalid(
                "A forced 'tool_choice' and a JSON 'response_format' cannot both constrain "
                "the reply.",
                "tool_choice",
            )
        json_schema = forced_call_schema(tools, tool_choice)

    params = evolve(
        sampling,
        max_tokens=max_completion_tokens if max_completion_tokens is not None else max_tokens,
        logprobs=parse_chat_logprobs(body),
        json_schema=json_schema,
    )
    return ChatRequest(
        model=model,
        messages=messages,
        params=params,
        stream=stream,
        include_usage=include_usage,
        tools=tools,
        tool_choice=tool_choice,
    )


def parse_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string; see GET /v1/models.", "model")
    return model


def parse_stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """`stream` and `stream_options.include_usage`."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean.", "stream")
    stream = bool(stream)
    include_usage = False
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise invalid(
                "'stream_options' is only allowed when 'stream' is true.", "stream_options"
            )
        if not isinstance(stream_options, dict):
            raise invalid("'stream_options' must be an object.", "stream_options")
        usage = stream_options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise invalid(
                "'stream_options.include_usage' must be a boolean.", "stream_options.include_usage"
            )
        include_usage = bool(usage)
    return stream, include_usage


# ---------------------------------------------------------------------------------------------
# Responses


def model_object(card: ModelCard) -> dict[str, Any]:
    """A model as OpenAI lists it: `created` is when the hub last changed the repo (0 when
    unknown), `owned_by` the repo's owner (exo for the bundled and local models)."""
    created = 0
    if card.modified:
        with contextlib.suppress(ValueError):
            created = int(datetime.fromisoformat(card.modified).timestamp())
    return {
        "id": card.model_id,
        "object": "model",
        "created": max(created, 0),
        "owned_by": card.location.split("/", 1)[0] if card.source == "hub" else "exo",
        "name": card.display_name,
        "context_length": card.context_length,
    }


def alias_object(alias: str, repo: str) -> dict[str, Any]:
    """A catalogue alias not read from the hub yet: asking for it fetches its repo."""
    return {
        "id": alias,
        "object": "model",
        "created": 0,
        "owned_by": repo.split("/")[0],
        "name": repo,
    }


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(finished: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": finished.cached_tokens},
    }


def sse_event(data: Any) -> bytes:
    return f"data: {dumps(data)}\n\n".encode()


@frozen
class _ChunkMaker:
    completion_id: str
    created: int
    model: str
    include_usage: bool

    def chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            data["usage"] = None
        return data

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(finished),
        }


def error_payload_for(error: Exception) -> dict[str, Any]:
    """The OpenAI error body for a failure after a stream's 200 went out."""
    backend_error = as_backend_error(error)
    if backend_error is not None:
        return backend_error_payload(backend_error)
    log.error("unexpected error while streaming a completion", exc_info=error)
    return server_error_payload()


def _finish_reason(finished: Finished, parser: CallParser | None) -> str:
    if parser is not None and parser.calls and finished.finish_reason == "stop":
        return "tool_calls"
    return finished.finish_reason


def _parser_for(chat: ChatRequest) -> CallParser | None:
    tools = chat.offered_tools
    return CallParser(tools, chat.tool_choice.forced) if tools else None


class SseFormat:
    """OpenAI's chat-completion chunks as server-sent events, ending with `[DONE]`.

    With tools offered, text goes through a `CallParser`: each call is sent as one
    `tool_calls` delta as soon as it is complete, and tagged call text is never shown.
    """

    def __init__(self, chat: ChatRequest) -> None:
        self._maker = _ChunkMaker(
            new_completion_id(), int(time.time()), chat.model, chat.include_usage
        )
        self._include_usage = chat.include_usage
        self._logprobs = chat.params.logprobs is not None
        self._parser = _parser_for(chat)
        self._calls_sent = 0

    def start(self) -> list[bytes]:
        return [sse_event(self._maker.chunk({"role": "assistant", "content": ""}))]

    def token(self, chunk: TokenOut) -> list[bytes]:
        text, calls = chunk.text, []
        if self._parser is not None:
            text, calls = self._parser.feed(text)
        events: list[bytes] = []
        if text or (self._logprobs and chunk.logprobs):
            logprobs = chat_logprobs([chunk]) if self._logprobs else None
            events.append(sse_event(self._maker.chunk({"content": text}, logprobs=logprobs)))
        return events + self._call_events(calls)

    def _call_events(self, calls: list[ToolCall]) -> list[bytes]:
        events = []
        for call in calls:
            delta = {"tool_calls": [call_delta(self._calls_sent, call)]}
            events.append(sse_event(self._maker.chunk(delta)))
            self._calls_sent += 1
        return events

    def finish(self, finished: Finished) -> list[bytes]:
        events: list[bytes] = []
        if self._parser is not None:
            text, calls = self._parser.finish()
            if text:
                events.append(sse_event(self._maker.chunk({"content": text})))
            events += self._call_events(calls)
        reason = _finish_reason(finished, self._parser)
        events.append(sse_event(self._maker.chunk({}, reason)))
        if self._include_usage:
            events.append(sse_event(self._maker.usage_chunk(finished)))
        return [*events, SSE_DONE]

    def error(self, error: Exception) -> list[bytes]:
        return [sse_event(error_payload_for(error)), SSE_DONE]


async def complete_chat(backend: Backend, chat: ChatRequest) -> dict[str, Any]:
    """A whole `chat.completion` object; raises BackendError."""
    created = int(time.time())
    whole = await whole_generation(
        backend, chat.model, chat.messages, chat.params, chat.offered_tools
    )
    # `refusal` is required by OpenAI's schema; this engine never refuses on its own.
    message: dict[str, Any] = {"role": "assistant", "content": whole.text, "refusal": None}
    parser = _parser_for(chat)
    if parser is not None:
        shown, _ = parser.feed(whole.text)
        rest, _ = parser.finish()
        text = shown + rest
        message["content"] = (text.strip() or None) if parser.calls else text
        if parser.calls:
            message["tool_calls"] = [call_object(c) for c in parser.calls]
    return {
        "id": new_completion_id(),
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": chat_logprobs(whole.chunks)
                if chat.params.logprobs is not None
                else None,
                "finish_reason": _finish_reason(whole.finished, parser),
            }
        ],
        "usage": usage(whole.finished),
    }


# ---------------------------------------------------------------------------------------------
# Routes


def register_openai(app: QuartTrio, backend: Backend) -> None:
    """Add `GET /v1/models`, `GET /v1/models/<id>` and `POST /v1/chat/completions`."""

    @app.get("/v1/models")
    async def list_models() -> TrioResponse:
        data = [model_object(card) for card in backend.models()]
        data += [
            alias_object(view["id"], view["alias_of"])
            for view in backend.model_views()
            if view.get("card") is None and view.get("alias_of")
        ]
        return json_response({"object": "list", "data": data})

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> TrioResponse:
        card = next((c for c in backend.models() if c.model_id == model_id), None)
        if card is None:
            return backend_error_response(UnknownModel(model_id))
        return json_response(model_object(card))

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
                backend, chat.model, chat.messages, chat.params, SseFormat(chat), chat.offered_tools
            )
            return await streamed_response(
                body, backend_error_response, SSE_CONTENT_TYPE, SSE_HEADERS
            )
        try:
            completion = await complete_chat(backend, chat)
        except Exception as error:
            backend_error = as_backend_error(error)
            if backend_error is None:
                raise  # the app's catch-all logs it and answers a JSON 500
            return backend_error_response(backend_error)
        return json_response(completion)
