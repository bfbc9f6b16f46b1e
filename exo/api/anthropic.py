"""The Anthropic Messages dialect: `POST /v1/messages` (streamed or not) and
`POST /v1/messages/count_tokens`, so that the official `anthropic` clients work unchanged.

Bodies are validated here before the backend is asked for anything. Only text is
supported: image, document, tool-use and tool-result blocks, tools and extended thinking
are refused with a 400 rather than ignored; unknown extra fields (`service_tier`, ...) are
accepted and ignored, as clients send them routinely. `x-api-key` and `anthropic-version`
headers are ignored.

Errors on these paths are Anthropic's `{"type": "error", "error": {"type", "message"}}`.
A backend's 503 keeps its status (what proxies and exo's own retries understand) but says
`overloaded_error`, the type Anthropic sends with its 529.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import HTTPException, NotFound

from exo.api.backend import Backend, BackendError, InvalidRequest, UnknownModel
from exo.api.errors import (
    SERVER_ERROR_MESSAGE,
    as_backend_error,
    dumps,
    http_error_parts,
    json_response,
)
from exo.api.openai import CONTENT_PART_SEPARATOR, SSE_CONTENT_TYPE, SSE_HEADERS
from exo.api.streaming import GenerationStream, Whole, whole_generation
from exo.api.validation import (
    decode_json_body,
    invalid,
    is_int,
    optional_number,
    optional_positive_int,
    parse_stop,
    text_parts,
)
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut

log = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages"
# Anthropic documents no cap; OpenAI's is 4. Each one costs the engine a suffix check per
# token, so keep it small but generous.
MAX_STOP_SEQUENCES = 16
ROLES = ("user", "assistant")
# max_tokens 0 asks the engine to render and tokenize the prompt and generate nothing.
COUNT_ONLY = SamplingParams(max_tokens=0)

# Anthropic's error type for each HTTP status; others: invalid_request_error below 500,
# api_error from 500.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_ONLY_TEXT = "only text blocks are supported: not images, documents, tool use or tool results"
_UNKNOWN_ROUTE = f"Unknown route; see POST {MESSAGES_PATH} and {MESSAGES_PATH}/count_tokens."


# ---------------------------------------------------------------------------------------------
# Errors


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_payload(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def anthropic_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> TrioResponse:
    return json_response(error_payload(status, message), status, headers)


def backend_error(error: BackendError) -> TrioResponse:
    return anthropic_error(error.status, error.message)


def anthropic_http_error(error: HTTPException, message: str | None = None) -> TrioResponse:
    """A werkzeug HTTPException (404, 405, 413, ...) under `/v1/messages`, in Anthropic's shape."""
    if isinstance(error, NotFound):
        message = message or _UNKNOWN_ROUTE
    status, text, headers = http_error_parts(error, message)
    return anthropic_error(status, text, headers)


def is_anthropic_path(path: str) -> bool:
    """Whether an HTTP-level error on `path` should be answered in Anthropic's shape."""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


# ---------------------------------------------------------------------------------------------
# Validation


@frozen
class MessagesRequest:
    """A validated `POST /v1/messages` body; `messages` starts with the system prompt, if any."""

    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    stream: bool = False


def _text(value: object, where: str) -> str:
    """A string, or the text blocks of a list joined; any other kind of block is refused."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid(f"'{where}' must be a string or a list of text blocks.", where)
    texts = text_parts(value, where, ("text",), _ONLY_TEXT)
    return CONTENT_PART_SEPARATOR.join(texts)


def _parse_turns(value: object) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise invalid("'messages' must be a non-empty list of messages.", "messages")
    turns: list[ChatMessage] = []
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object with 'role' and 'content'.", where)
        role = item.get("role")
        if role not in ROLES:
            raise invalid(
                f"'{where}.role' must be 'user' or 'assistant'; got {role!r} "
                "(a system prompt goes in the top-level 'system').",
                f"{where}.role",
            )
        turns.append(
            ChatMessage(role=str(role), content=_text(item.get("content"), f"{where}.content"))
        )
    if turns[-1].role == "assistant":
        # Anthropic continues a final assistant turn; exo's chat templates cannot yet.
        raise invalid(
            "A final assistant message (prefill) is not supported yet; end with a user message.",
            f"messages[{len(turns) - 1}]",
        )
    return tuple(turns)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    if body.get("tools") not in (None, []):
        raise invalid(f"tools are not supported on {MESSAGES_PATH} yet.", "tools")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and not (
        isinstance(tool_choice, dict) and tool_choice.get("type") in ("auto", "none")
    ):
        # "any" and "tool" demand a tool call, which cannot happen without tools.
        raise invalid(f"tools are not supported on {MESSAGES_PATH} yet.", "tool_choice")
    thinking = body.get("thinking")
    if thinking is not None and not (
        isinstance(thinking, dict) and thinking.get("type") == "disabled"
    ):
        raise invalid(
            'Extended thinking is not supported; omit \'thinking\' or send {"type": "disabled"}.',
            "thinking",
        )
    output_config = body.get("output_config")
    if isinstance(output_config, dict) and output_config.get("format") is not None:
        raise invalid(
            f"Structured output (output_config.format) is not supported on {MESSAGES_PATH} yet.",
            "output_config.format",
        )


def parse_prompt(body: object) -> tuple[str, tuple[ChatMessage, ...]]:
    """The model and the chat (system prompt first) of a messages or count_tokens body."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string; see GET /v1/models.", "model")
    _refuse_unsupported(body)
    turns = _parse_turns(body.get("messages"))
    system = body.get("system")
    system_text = "" if system is None else _text(system, "system")
    return model, ((ChatMessage("system", system_text),) if system_text else ()) + turns


def parse_messages_request(body: object) -> MessagesRequest:
    """Validate a decoded `/v1/messages` body; raises InvalidRequest naming the field."""
    model, messages = parse_prompt(body)
    assert isinstance(body, dict)  # parse_prompt checked
    if body.get("max_tokens") is None:
        raise invalid("'max_tokens' is required.", "max_tokens")
    max_tokens = optional_positive_int(body, "max_tokens")
    temperature = optional_number(body, "temperature", 0.0, 1.0)
    top_p = optional_number(body, "top_p", 0.0, 1.0, low_open=True)
    top_k = body.get("top_k", 0)
    if not is_int(top_k) or top_k < 0:
        raise invalid(f"'top_k' must be an integer of at least 0; got {top_k!r}.", "top_k")
    stop = parse_stop(
        body.get("stop_sequences"),
        name="stop_sequences",
        limit=MAX_STOP_SEQUENCES,
        allow_string=False,
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean.", "stream")
    params = SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        max_tokens=max_tokens,
        stop=stop,
        top_k=top_k,
    )
    return MessagesRequest(model=model, messages=messages, params=params, stream=stream)


# ---------------------------------------------------------------------------------------------
# Responses


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_reason(finished: Finished) -> str:
    """Anthropic's name for how the generation ended."""
    if finished.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def _usage(finished: Finished | None) -> dict[str, int]:
    if finished is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {"input_tokens": finished.prompt_tokens, "output_tokens": finished.completion_tokens}


def _end(finished: Finished | None) -> dict[str, Any]:
    if finished is None:
        return {"stop_reason": None, "stop_sequence": None}
    reason = stop_reason(finished)
    sequence = finished.stop_sequence if reason == "stop_sequence" else None
    return {"stop_reason": reason, "stop_sequence": sequence}


def message_object(
    message_id: str, model: str, text: str | None, finished: Finished | None
) -> dict[str, Any]:
    """A `message`: whole (text and finished given), or as `message_start` opens a stream."""
    content = [] if text is None else [{"type": "text", "text": text}]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        **_end(finished),
        "usage": _usage(finished),
    }


def sse_event(data: Mapping[str, Any]) -> bytes:
    """One server-sent event, named after its payload's `type` as Anthropic does."""
    return f"event: {data['type']}\ndata: {dumps(data)}\n\n".encode()


class MessagesSseFormat:
    """Anthropic's stream: message_start, one text block of text_delta events, message_delta
    and message_stop; the order the SDK's stream accumulator requires.

    The prompt's token count is only known at the end: message_start says 0 input tokens and
    message_delta carries the real count, which the SDK's accumulator takes over.
    """

    def __init__(self, model: str) -> None:
        self._model = model

    def start(self) -> list[bytes]:
        message = message_object(new_message_id(), self._model, None, None)
        return [
            sse_event({"type": "message_start", "message": message}),
            sse_event(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            ),
            sse_event({"type": "ping"}),
        ]

    def token(self, chunk: TokenOut) -> list[bytes]:
        if not chunk.text:
            return []
        delta = {"type": "text_delta", "text": chunk.text}
        return [sse_event({"type": "content_block_delta", "index": 0, "delta": delta})]

    def finish(self, finished: Finished) -> list[bytes]:
        return [
            sse_event({"type": "content_block_stop", "index": 0}),
            sse_event(
                {"type": "message_delta", "delta": _end(finished), "usage": _usage(finished)}
            ),
            sse_event({"type": "message_stop"}),
        ]

    def error(self, error: Exception) -> list[bytes]:
        known = as_backend_error(error)
        if known is None:
            log.error("unexpected error while streaming a message", exc_info=error)
            return [sse_event(error_payload(500, SERVER_ERROR_MESSAGE))]
        return [sse_event(error_payload(known.status, known.message))]


# ---------------------------------------------------------------------------------------------
# Routes


def register_anthropic(app: QuartTrio, backend: Backend) -> None:
    """Add `POST /v1/messages` and `POST /v1/messages/count_tokens`."""

    def is_known(model: str) -> bool:
        return any(card.model_id == model for card in backend.models())

    async def whole_answer(
        model: str,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        answer: Callable[[Whole], dict[str, Any]],
    ) -> TrioResponse:
        try:
            whole = await whole_generation(backend, model, messages, params)
        except Exception as error:
            known = as_backend_error(error)
            if known is None:
                raise  # the app's catch-all logs it and answers a 500 in Anthropic's shape
            return backend_error(known)
        return json_response(answer(whole))

    @app.post(MESSAGES_PATH, endpoint="anthropic_messages")
    async def messages() -> TrioResponse:
        # get_data raises RequestEntityTooLarge (413) past MAX_CONTENT_LENGTH.
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            chat = parse_messages_request(decode_json_body(raw))
        except InvalidRequest as error:
            return backend_error(error)
        if not is_known(chat.model):
            # Checked before a stream starts, so even a streaming client gets a real 404.
            return backend_error(UnknownModel(chat.model))
        if chat.stream:
            form = MessagesSseFormat(chat.model)
            return TrioResponse(
                GenerationStream(backend, chat.model, chat.messages, chat.params, form),
                status=200,
                headers=SSE_HEADERS,
                content_type=SSE_CONTENT_TYPE,
            )
        return await whole_answer(
            chat.model,
            chat.messages,
            chat.params,
            lambda whole: message_object(new_message_id(), chat.model, whole.text, whole.finished),
        )

    @app.post(f"{MESSAGES_PATH}/count_tokens", endpoint="anthropic_count_tokens")
    async def count_tokens() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            model, chat = parse_prompt(decode_json_body(raw))
        except InvalidRequest as error:
            return backend_error(error)
        if not is_known(model):
            return backend_error(UnknownModel(model))
        # The prompt as the model's template renders it, counted by the engine itself.
        return await whole_answer(
            model, chat, COUNT_ONLY, lambda whole: {"input_tokens": whole.finished.prompt_tokens}
        )
