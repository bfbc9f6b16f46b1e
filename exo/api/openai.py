"""The OpenAI dialect: `/v1/models` and `/v1/chat/completions`, streamed or not.

Request bodies are validated here, strictly, before the backend is asked for anything; each
violation is a 400 naming the offending field in `param`. Streaming uses server-sent events
with one `chat.completion.chunk` per token, flushed as it is produced.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from attrs import frozen
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import (
    Backend,
    InvalidRequest,
    UnknownModel,
)
from exo.api.errors import (
    as_backend_error,
    backend_error_payload,
    backend_error_response,
    dumps,
    json_response,
    server_error_payload,
)
from exo.api.streaming import GenerationStream, whole_generation
from exo.api.validation import (
    INT64_MAX,
    INT64_MIN,
    decode_json_body,
    invalid,
    is_int,
    optional_number,
    optional_positive_int,
    parse_stop,
)
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut
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


@frozen
class ChatRequest:
    """A validated `POST /v1/chat/completions` body."""

    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False


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
        content = _parse_content(item.get("content"), role, f"{where}.content")
        messages.append(ChatMessage(role=ROLES[role], content=content))
    return tuple(messages)


def parse_chat_request(body: object) -> ChatRequest:
    """Validate a decoded chat-completions body; raises InvalidRequest naming the field."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string; see GET /v1/models.", "model")
    messages = parse_messages(body.get("messages"))

    temperature = optional_number(body, "temperature", 0.0, 2.0)
    top_p = optional_number(body, "top_p", 0.0, 1.0, low_open=True)
    max_tokens = optional_positive_int(body, "max_tokens")
    max_completion_tokens = optional_positive_int(body, "max_completion_tokens")
    stop = parse_stop(body.get("stop"))

    seed = body.get("seed")
    if seed is not None and (not is_int(seed) or not INT64_MIN <= seed <= INT64_MAX):
        raise invalid("'seed' must be a 64-bit integer.", "seed")

    n = body.get("n")
    if n is not None and (not is_int(n) or n != 1):
        raise invalid(f"Only n=1 is supported; got {n!r}.", "n")

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

    # Features we do not implement are refused rather than silently ignored.
    tools = body.get("tools")
    if tools is not None and tools != []:
        raise invalid("Tool calling is not supported.", "tools")
    if body.get("functions"):
        raise invalid("Function calling is not supported.", "functions")
    if body.get("logprobs"):
        raise invalid("'logprobs' is not supported.", "logprobs")
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") != "text"
    ):
        raise invalid('Only response_format {"type": "text"} is supported.', "response_format")

    params = SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        max_tokens=max_completion_tokens if max_completion_tokens is not None else max_tokens,
        stop=stop,
        seed=seed,
    )
    return ChatRequest(
        model=model,
        messages=messages,
        params=params,
        stream=stream,
        include_usage=include_usage,
    )


# ---------------------------------------------------------------------------------------------
# Responses


def model_object(card: ModelCard) -> dict[str, Any]:
    return {
        "id": card.model_id,
        "object": "model",
        "created": 0,
        "owned_by": "exo",
        "name": card.display_name,
        "context_length": card.context_length,
    }


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def sse_event(data: Any) -> bytes:
    return f"data: {dumps(data)}\n\n".encode()


@frozen
class _ChunkMaker:
    completion_id: str
    created: int
    model: str
    include_usage: bool

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
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
            "usage": _usage(finished),
        }


def _error_payload_for(error: Exception) -> dict[str, Any]:
    backend_error = as_backend_error(error)
    if backend_error is not None:
        return backend_error_payload(backend_error)
    log.error("unexpected error while streaming a chat completion", exc_info=error)
    return server_error_payload()


class SseFormat:
    """OpenAI's chat-completion chunks as server-sent events, ending with `[DONE]`."""

    def __init__(self, chat: ChatRequest) -> None:
        self._maker = _ChunkMaker(
            new_completion_id(), int(time.time()), chat.model, chat.include_usage
        )
        self._include_usage = chat.include_usage

    def start(self) -> list[bytes]:
        return [sse_event(self._maker.chunk({"role": "assistant", "content": ""}))]

    def token(self, chunk: TokenOut) -> list[bytes]:
        return [sse_event(self._maker.chunk({"content": chunk.text}))] if chunk.text else []

    def finish(self, finished: Finished) -> list[bytes]:
        events = [sse_event(self._maker.chunk({}, finished.finish_reason))]
        if self._include_usage:
            events.append(sse_event(self._maker.usage_chunk(finished)))
        return [*events, SSE_DONE]

    def error(self, error: Exception) -> list[bytes]:
        return [sse_event(_error_payload_for(error)), SSE_DONE]


async def complete_chat(backend: Backend, chat: ChatRequest) -> dict[str, Any]:
    """A whole `chat.completion` object; raises BackendError."""
    created = int(time.time())
    whole = await whole_generation(backend, chat.model, chat.messages, chat.params)
    text, finished = whole.text, whole.finished
    return {
        "id": new_completion_id(),
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finished.finish_reason,
            }
        ],
        "usage": _usage(finished),
    }


# ---------------------------------------------------------------------------------------------
# Routes


def register_openai(app: QuartTrio, backend: Backend) -> None:
    """Add `GET /v1/models`, `GET /v1/models/<id>` and `POST /v1/chat/completions`."""

    @app.get("/v1/models")
    async def list_models() -> TrioResponse:
        return json_response(
            {"object": "list", "data": [model_object(card) for card in backend.models()]}
        )

    def find_card(model_id: str) -> ModelCard | None:
        return next((c for c in backend.models() if c.model_id == model_id), None)

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> TrioResponse:
        card = find_card(model_id)
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
        if find_card(chat.model) is None:
            # Checked before a stream starts, so even a streaming client gets a real 404.
            return backend_error_response(UnknownModel(chat.model))

        if chat.stream:
            return TrioResponse(
                GenerationStream(backend, chat.model, chat.messages, chat.params, SseFormat(chat)),
                status=200,
                headers=SSE_HEADERS,
                content_type=SSE_CONTENT_TYPE,
            )
        try:
            completion = await complete_chat(backend, chat)
        except Exception as error:
            backend_error = as_backend_error(error)
            if backend_error is None:
                raise  # the app's catch-all logs it and answers a JSON 500
            return backend_error_response(backend_error)
        return json_response(completion)
