"""The Anthropic Messages dialect: `POST /v1/messages` (streamed or not) and
`POST /v1/messages/count_tokens`, so that the official `anthropic` clients work unchanged.

Bodies are validated (`exo.api.anthropic_request`) before the backend is asked for
anything. Text and custom tools are supported: tool_use and tool_result blocks become the
chat's tool calls and `tool` messages, and calls in the reply (parsed by `exo.api.tool_calls`, as for OpenAI's dialect)
become tool_use blocks. Image and document blocks, Anthropic's server tools and extended
thinking are refused with a 400 rather than ignored; unknown extra fields (`service_tier`,
...) are accepted and ignored, as clients send them routinely. `x-api-key` and
`anthropic-version` headers are ignored.

Errors on these paths are Anthropic's `{"type": "error", "error": {"type", "message"}}`.
A backend's 503 keeps its status (what proxies and exo's own retries understand) but says
`overloaded_error`, the type Anthropic sends with its 529.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from msgspec import Struct, to_builtins
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import HTTPException, NotFound

from exo.api.anthropic_request import (
    MESSAGES_PATH,
    MessagesRequest,
    Prompt,
    parse_messages_request,
    parse_prompt,
)
from exo.api.anthropic_response import (
    AnthropicError,
    AnthropicErrorDetail,
    AnthropicMessage,
    AnthropicStreamEvent,
    AnthropicTextBlock,
    AnthropicTokenCount,
    AnthropicToolUseBlock,
    AnthropicUsage,
    ContentBlock,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    InputJsonDelta,
    MessageDelta,
    MessageStart,
    MessageStop,
    Ping,
    StopDetails,
    StopReason,
    TextDelta,
)
from exo.api.backend import Backend, BackendError, InvalidRequest, lookup_model
from exo.api.errors import (
    SERVER_ERROR_MESSAGE,
    as_backend_error,
    http_error_parts,
    json_response,
)
from exo.api.streaming import (
    SSE_CONTENT_TYPE,
    SSE_HEADERS,
    GenerationStream,
    Whole,
    named_sse_event,
    streamed_response,
    whole_generation,
)
from exo.api.tool_calls import (
    CallParser,
)
from exo.api.validation import (
    decode_json_body,
)
from exo.engine.protocol import Finished, SamplingParams, TokenOut, ToolCall

log = logging.getLogger(__name__)
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
_UNKNOWN_ROUTE = f"Unknown route; see POST {MESSAGES_PATH} and {MESSAGES_PATH}/count_tokens."


# ---------------------------------------------------------------------------------------------
# Errors


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_payload(status: int, message: str) -> dict[str, Any]:
    return to_builtins(AnthropicError(AnthropicErrorDetail(error_type(status), message)))


def anthropic_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> TrioResponse:
    return json_response(error_payload(status, message), status, headers)


def backend_error(error: BackendError) -> TrioResponse:
    return anthropic_error(error.status, error.message, error.headers)


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
# Responses


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_reason(finished: Finished, called: bool = False) -> StopReason:
    """Anthropic's name for how the generation ended; `called`: the reply made tool calls."""
    if finished.finish_reason == "length":
        return "max_tokens"
    if called:
        return "tool_use"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def _end(finished: Finished | None, called: bool = False) -> StopDetails:
    if finished is None:
        return StopDetails(None, None)
    reason = stop_reason(finished, called)
    return StopDetails(reason, finished.stop_sequence if reason == "stop_sequence" else None)


def message_object(
    message_id: str,
    model: str,
    content: list[ContentBlock],
    finished: Finished | None,
    called: bool = False,
) -> AnthropicMessage:
    """A `message`: whole (finished given), or as `message_start` opens a stream."""
    end = _end(finished, called)
    usage = AnthropicUsage.of(finished)
    return AnthropicMessage(
        message_id, "assistant", model, content, end.stop_reason, end.stop_sequence, usage
    )


def tool_use_id(call: ToolCall) -> str:
    """A call's id in Anthropic's `toolu_` form."""
    return "toolu_" + call.id.removeprefix("call_")


def tool_use_block(call: ToolCall) -> AnthropicToolUseBlock:
    """A call as a whole `tool_use` block."""
    return AnthropicToolUseBlock(tool_use_id(call), call.name, json.loads(call.arguments))


def _parser_for(prompt: Prompt) -> CallParser | None:
    """Reads calls out of the reply when tools were offered; with a forced choice (decoding
    constrained to a call), the whole reply is the call."""
    tools = prompt.offered_tools
    return CallParser(tools, prompt.tool_choice.forced) if tools else None


def reply_message(chat: MessagesRequest, whole: Whole) -> AnthropicMessage:
    """The whole `message` of a generation: its text, then one tool_use block per call (an
    empty text block is left out when there are calls, as Anthropic does)."""
    text, calls = whole.text, []
    parser = _parser_for(chat.prompt)
    if parser is not None:
        shown, _ = parser.feed(whole.text)
        rest, _ = parser.finish()
        text, calls = shown + rest, parser.calls
    content: list[ContentBlock] = [] if calls and not text.strip() else [AnthropicTextBlock(text)]
    content += [tool_use_block(call) for call in calls]
    message_id = new_message_id()
    return message_object(message_id, chat.prompt.model, content, whole.finished, bool(calls))


def sse_event(event: AnthropicStreamEvent) -> bytes:
    """One server-sent event, named after its `type` as Anthropic does."""
    return named_sse_event(to_builtins(event))


_PING = sse_event(Ping())


def _block_stop(index: int) -> bytes:
    return sse_event(ContentBlockStop(index))


class MessagesSseFormat:
    """Anthropic's stream: message_start, content blocks (each content_block_start, deltas,
    content_block_stop), message_delta and message_stop; the order the SDK's stream
    accumulator requires, with each block's `index` its place in the final `content`.

    The text block (index 0) opens with the stream. With tools offered, the text goes
    through a `CallParser`; each call, once complete, closes the open text block and is
    sent whole as a tool_use block: its start with empty `input`, one `input_json_delta`
    holding all of the arguments, its stop. Text after a call opens a new text block (its
    leading whitespace, which only separates it from the call, left out).

    The prompt's token count is only known at the end: message_start says 0 input tokens and
    message_delta carries the real count, which the SDK's accumulator takes over.
    """

    def __init__(self, chat: MessagesRequest) -> None:
        self._model = chat.prompt.model
        self._parser = _parser_for(chat.prompt)
        self._blocks = 0  # content blocks started
        self._text_block: int | None = None  # the index of the open text block

    def _start_block(self, block: ContentBlock) -> bytes:
        self._blocks += 1
        return sse_event(ContentBlockStart(self._blocks - 1, block))

    def start(self) -> list[bytes]:
        message = message_object(new_message_id(), self._model, [], None)
        opened = self._start_block(AnthropicTextBlock(""))
        self._text_block = 0
        return [sse_event(MessageStart(message)), opened, _PING]

    def token(self, chunk: TokenOut) -> list[bytes]:
        if self._parser is None:
            return self._text_events(chunk.text)
        text, calls = self._parser.feed(chunk.text)
        return self._text_events(text) + self._call_events(calls)

    def _text_events(self, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self._text_block is None:
            text = text.lstrip()  # what separates it from the call before
            if not text:
                return []
            events.append(self._start_block(AnthropicTextBlock("")))
            self._text_block = self._blocks - 1
        if text:
            events.append(sse_event(ContentBlockDelta(self._text_block, TextDelta(text))))
        return events

    def _close_text(self) -> list[bytes]:
        index, self._text_block = self._text_block, None
        return [] if index is None else [_block_stop(index)]

    def _call_events(self, calls: list[ToolCall]) -> list[bytes]:
        events: list[bytes] = []
        for call in calls:
            events += self._close_text()
            # The block opens with empty input; the arguments follow as one delta.
            opened = AnthropicToolUseBlock(tool_use_id(call), call.name, {})
            events.append(self._start_block(opened))
            index = self._blocks - 1
            events.append(sse_event(ContentBlockDelta(index, InputJsonDelta(call.arguments))))
            events.append(_block_stop(index))
        return events

    def finish(self, finished: Finished) -> list[bytes]:
        events: list[bytes] = []
        if self._parser is not None:
            text, calls = self._parser.finish()
            events = self._text_events(text) + self._call_events(calls)
        delta = _end(finished, self._parser is not None and bool(self._parser.calls))
        return [
            *events,
            *self._close_text(),
            sse_event(MessageDelta(delta, AnthropicUsage.of(finished))),
            sse_event(MessageStop()),
        ]

    def error(self, error: Exception) -> list[bytes]:
        known = as_backend_error(error)
        if known is None:
            log.error("unexpected error while streaming a message", exc_info=error)
            return [named_sse_event(error_payload(500, SERVER_ERROR_MESSAGE))]
        return [named_sse_event(error_payload(known.status, known.message))]


# ---------------------------------------------------------------------------------------------
# Routes


def register_anthropic(app: QuartTrio, backend: Backend) -> None:
    """Add `POST /v1/messages` and `POST /v1/messages/count_tokens`."""

    async def whole_answer(
        prompt: Prompt, params: SamplingParams, answer: Callable[[Whole], Struct]
    ) -> TrioResponse:
        try:
            whole = await whole_generation(
                backend, prompt.model, prompt.messages, params, prompt.offered_tools
            )
        except Exception as error:
            known = as_backend_error(error)
            if known is None:
                raise  # the app's catch-all logs it and answers a 500 in Anthropic's shape
            return backend_error(known)
        return json_response(to_builtins(answer(whole)))

    @app.post(MESSAGES_PATH, endpoint="anthropic_messages")
    async def messages() -> TrioResponse:
        # get_data raises RequestEntityTooLarge (413) past MAX_CONTENT_LENGTH.
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            chat = parse_messages_request(decode_json_body(raw))
        except InvalidRequest as error:
            return backend_error(error)
        prompt = chat.prompt
        found = await lookup_model(backend, prompt.model)
        if isinstance(found, BackendError):
            return backend_error(found)
        if chat.stream:
            form = MessagesSseFormat(chat)
            body = GenerationStream(
                backend, prompt.model, prompt.messages, chat.params, form, prompt.offered_tools
            )
            return await streamed_response(body, backend_error, SSE_CONTENT_TYPE, SSE_HEADERS)
        return await whole_answer(prompt, chat.params, lambda whole: reply_message(chat, whole))

    @app.post(f"{MESSAGES_PATH}/count_tokens", endpoint="anthropic_count_tokens")
    async def count_tokens() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            prompt = parse_prompt(decode_json_body(raw))
        except InvalidRequest as error:
            return backend_error(error)
        found = await lookup_model(backend, prompt.model)
        if isinstance(found, BackendError):
            return backend_error(found)
        # The prompt as the model's template renders it, tools included, counted by the
        # engine itself.
        return await whole_answer(
            prompt, COUNT_ONLY, lambda whole: AnthropicTokenCount(whole.finished.prompt_tokens)
        )
