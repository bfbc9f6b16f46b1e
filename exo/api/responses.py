"""OpenAI's Responses API: `POST /v1/responses`, streamed or not: text, and function tools.

A request is validated strictly, as in the chat-completions dialect, and becomes the same
chat messages, sampling parameters and tools; function calls are parsed from the reply by
the same `CallParser` and come out as `function_call` items. exo keeps no responses:
every response is answered as if `store` were false, so `previous_response_id`,
`conversation` and `background` are refused and `GET /v1/responses/{id}` is a 404 saying
so. A stream is OpenAI's typed server-sent events (`event:` + `data:`, each with a rising
`sequence_number`), so the official client's `responses.stream()` accumulator can rebuild
the final response.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import evolve, frozen
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend, BackendError, InvalidRequest, UnknownModel
from exo.api.errors import (
    SERVER_ERROR_MESSAGE,
    as_backend_error,
    backend_error_response,
    dumps,
    error_response,
    json_response,
)
from exo.api.openai import (
    CONTENT_PART_SEPARATOR,
    NO_TOOLS,
    ROLES,
    SSE_CONTENT_TYPE,
    SSE_HEADERS,
)
from exo.api.streaming import GenerationStream, Whole, whole_generation
from exo.api.tool_calls import (
    CallParser,
    ToolChoice,
    forced_call_schema,
    offered,
    parse_tool_choice,
    parse_tools,
    read_tool,
)
from exo.api.validation import (
    decode_json_body,
    invalid,
    is_int,
    optional_number,
    optional_positive_int,
    text_parts,
)
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut, Tool, ToolCall

log = logging.getLogger(__name__)

# Input message roles (no `tool`: tool results come as function_call_output items).
INPUT_ROLES = {role: ROLES[role] for role in ("system", "developer", "user", "assistant")}
# Text parts of a message; `output_text` is how replayed assistant turns arrive.
TEXT_PARTS = ("input_text", "output_text")
# OpenAI's limits on `metadata`.
METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512
# The schema that `text.format: {"type": "json_object"}` constrains the reply to.
JSON_OBJECT_SCHEMA = '{"type":"object"}'
NOT_STORED = "exo does not store responses (every response is answered as if 'store' were false)"


@frozen
class ResponsesRequest:
    """A validated `POST /v1/responses` body; `echo` holds the fields the response repeats."""

    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    stream: bool
    echo: Mapping[str, Any]
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = NO_TOOLS

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        return offered(self.tools, self.tool_choice)


# ---------------------------------------------------------------------------------------------
# Validation


def _parse_content(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise invalid(f"'{where}' must be a string or a non-empty list of text parts.", where)
    texts = text_parts(value, where, TEXT_PARTS, "only text input is supported")
    return CONTENT_PART_SEPARATOR.join(texts)


def _string(
    item: Mapping[str, Any], name: str, where: str, what: str = "a non-empty string"
) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"'{where}.{name}' must be {what}.", f"{where}.{name}")
    return value


def _parse_message(item: Mapping[str, Any], where: str) -> ChatMessage:
    role = item.get("role")
    if not isinstance(role, str) or role not in INPUT_ROLES:
        raise invalid(
            f"'{where}.role' must be one of {', '.join(sorted(INPUT_ROLES))}; got {role!r}.",
            f"{where}.role",
        )
    content = _parse_content(item.get("content"), f"{where}.content")
    return ChatMessage(role=INPUT_ROLES[role], content=content)


def parse_input(value: object) -> tuple[ChatMessage, ...]:
    """`input` as chat messages: a string is one user turn; items are text messages, the
    function calls of earlier turns and their outputs (as `tool` messages).

    Calls join the assistant turn right before them (its text, or the calls before), as
    chat templates render one assistant turn's text and calls together.
    """
    if isinstance(value, str):
        return (ChatMessage("user", value),)
    if not isinstance(value, list) or not value:
        raise invalid("'input' must be a string or a non-empty list of input items.", "input")
    messages: list[ChatMessage] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object: a message or a function call item.", where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_parse_message(item, where))
        elif kind == "function_call":
            arguments = _string(item, "arguments", where, "the arguments as JSON text")
            call = ToolCall(
                _string(item, "call_id", where), _string(item, "name", where), arguments
            )
            if messages and messages[-1].role == "assistant":
                messages[-1] = evolve(messages[-1], tool_calls=(*messages[-1].tool_calls, call))
            else:
                messages.append(ChatMessage("assistant", "", tool_calls=(call,)))
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            output = _parse_content(item.get("output"), f"{where}.output")
            messages.append(ChatMessage("tool", output, tool_call_id=call_id))
        else:
            raise invalid(
                f"'{where}' is a {kind!r} item; only message, function_call and "
                "function_call_output items are supported on /v1/responses.",
                f"{where}.type",
            )
    return tuple(messages)


def _read_function_tool(item: object, where: str, earlier: Sequence[Tool]) -> Tool:
    """A flat `{"type": "function", "name", "description"?, "parameters"?, "strict"?}`.

    exo runs none of OpenAI's built-in tools, so any other type is refused by name; a null
    field is one not given, as OpenAI's client sends them.
    """
    kind = item.get("type") if isinstance(item, dict) else None
    if not isinstance(item, dict) or kind != "function":
        raise invalid(
            f'\'{where}\' must be a function tool {{"type": "function", "name", ...}}; got '
            f"type {kind!r}: exo runs no built-in tools (web_search, file_search, "
            "code_interpreter, computer_use, mcp, ...).",
            f"{where}.type",
        )
    if item.get("strict") is not None and not isinstance(item["strict"], bool):
        raise invalid(f"'{where}.strict' must be a boolean.", f"{where}.strict")
    given = {name: value for name, value in item.items() if value is not None}
    return read_tool(given, where, "parameters", earlier)


def parse_function_tools(value: object) -> tuple[tuple[Tool, ...], list[dict[str, Any]]]:
    """`tools`, by the rules every dialect shares, and the tools as the response echoes them."""
    tools = parse_tools(value, _read_function_tool)
    fields = ("name", "description", "parameters", "strict")
    items = value if isinstance(value, list) else []
    echoed = [{"type": "function", **{f: item.get(f) for f in fields}} for item in items]
    return tools, echoed


def parse_responses_tool_choice(value: object, tools: tuple[Tool, ...]) -> tuple[ToolChoice, Any]:
    """`tool_choice` ("none", "auto", "required" or `{"type": "function", "name"}`) checked
    against `tools` by chat's rules, and as the response echoes it. "auto" without tools
    offers none (chat refuses it, but this route accepted it before it had tools)."""
    if value is None or (value == "auto" and not tools):
        return ToolChoice("auto" if tools else "none"), "auto"
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if not isinstance(name, str):
            raise invalid("'tool_choice.name' must be a string.", "tool_choice.name")
        named = {"type": "function", "function": {"name": name}}
        return parse_tool_choice(named, tools), {"type": "function", "name": name}
    if value not in ("none", "auto", "required"):
        raise invalid(
            '\'tool_choice\' must be "none", "auto", "required" or {"type": "function", '
            '"name": ...}: only function tools are supported.',
            "tool_choice",
        )
    return parse_tool_choice(value, tools), value


def parse_text_format(text: object) -> tuple[dict[str, Any], str | None]:
    """`text.format` as echoed back, and the JSON schema (as JSON text) it constrains to."""
    if text is None:
        return {"type": "text"}, None
    if not isinstance(text, dict):
        raise invalid('\'text\' must be an object like {"format": {"type": "text"}}.', "text")
    fmt = text.get("format")
    if fmt is None:
        return {"type": "text"}, None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if not isinstance(fmt, dict) or kind not in ("text", "json_schema", "json_object"):
        raise invalid(
            "'text.format.type' must be 'text', 'json_schema' or 'json_object'.",
            "text.format.type",
        )
    if kind == "text":
        return {"type": "text"}, None
    if kind == "json_object":
        return {"type": "json_object"}, JSON_OBJECT_SCHEMA
    name, schema, strict = fmt.get("name"), fmt.get("schema"), fmt.get("strict")
    description = fmt.get("description")
    if not isinstance(name, str) or not name:
        raise invalid("'text.format.name' must be a non-empty string.", "text.format.name")
    if not isinstance(schema, dict):
        raise invalid("'text.format.schema' must be a JSON schema object.", "text.format.schema")
    if strict is not None and not isinstance(strict, bool):
        raise invalid("'text.format.strict' must be a boolean.", "text.format.strict")
    if description is not None and not isinstance(description, str):
        raise invalid("'text.format.description' must be a string.", "text.format.description")
    echoed = {"type": "json_schema", "name": name, "schema": schema, "strict": strict}
    if description is not None:
        echoed["description"] = description
    return echoed, dumps(schema)


def _optional(body: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise invalid(f"'{name}' must be {what}.", name)
    return value


def _parse_metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > METADATA_MAX_PAIRS
        or not all(
            isinstance(v, str) and len(k) <= METADATA_MAX_KEY and len(v) <= METADATA_MAX_VALUE
            for k, v in value.items()
        )
    ):
        raise invalid(
            f"'metadata' must be an object of at most {METADATA_MAX_PAIRS} string values "
            f"(keys up to {METADATA_MAX_KEY} characters, values up to {METADATA_MAX_VALUE}).",
            "metadata",
        )
    return dict(value)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Refuse, rather than ignore, what would change the answer if it were honoured."""
    if body.get("previous_response_id") is not None:
        raise invalid(
            f"'previous_response_id' cannot be used: {NOT_STORED}; send the "
            "whole conversation in 'input'.",
            "previous_response_id",
        )
    if body.get("conversation") is not None:
        raise invalid(
            f"'conversation' cannot be used: {NOT_STORED}; send the whole conversation in 'input'.",
            "conversation",
        )
    if body.get("background"):
        raise invalid(f"'background' mode needs stored responses: {NOT_STORED}.", "background")
    if body.get("prompt") is not None:
        raise invalid("Stored prompt templates ('prompt') are not supported.", "prompt")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and not (is_int(top_logprobs) and top_logprobs == 0):
        raise invalid("'top_logprobs' is not supported on /v1/responses yet.", "top_logprobs")
    include = body.get("include")
    if isinstance(include, list) and "message.output_text.logprobs" in include:
        raise invalid("Log-probabilities are not supported on /v1/responses yet.", "include")


def parse_responses_request(body: object) -> ResponsesRequest:
    """Validate a decoded `POST /v1/responses` body; raises InvalidRequest naming the field."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string; see GET /v1/models.", "model")
    if "input" not in body:
        raise invalid("'input' is required: a string or a list of input items.", "input")
    messages = parse_input(body["input"])
    instructions = _optional(body, "instructions", str, "a string")
    if instructions is not None:
        messages = (ChatMessage("system", instructions), *messages)

    temperature = optional_number(body, "temperature", 0.0, 2.0)
    top_p = optional_number(body, "top_p", 0.0, 1.0, low_open=True)
    max_output_tokens = optional_positive_int(body, "max_output_tokens")
    stream = bool(_optional(body, "stream", bool, "a boolean"))
    _optional(body, "store", bool, "a boolean")
    parallel_tool_calls = _optional(body, "parallel_tool_calls", bool, "a boolean")
    user = _optional(body, "user", str, "a string")
    _optional(body, "reasoning", dict, "an object")  # ignored: see docs/api.md
    truncation = body.get("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise invalid("'truncation' must be 'auto' or 'disabled'.", "truncation")
    metadata = _parse_metadata(body.get("metadata"))
    text_format, json_schema = parse_text_format(body.get("text"))
    _refuse_unsupported(body)
    tools, echoed_tools = parse_function_tools(body.get("tools"))
    tool_choice, echoed_choice = parse_responses_tool_choice(body.get("tool_choice"), tools)
    if tool_choice.forced:
        if json_schema is not None:
            raise invalid(
                "A forced 'tool_choice' and a JSON 'text.format' cannot both constrain the reply.",
                "tool_choice",
            )
        json_schema = forced_call_schema(tools, tool_choice)

    params = SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        max_tokens=max_output_tokens,
        json_schema=json_schema,
    )
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_output_tokens,
        "metadata": metadata,
        "parallel_tool_calls": True if parallel_tool_calls is None else parallel_tool_calls,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "text": {"format": text_format},
        "tool_choice": echoed_choice,
        "tools": echoed_tools,
        "user": user,
    }
    return ResponsesRequest(model, messages, params, stream, echo, tools, tool_choice)


# ---------------------------------------------------------------------------------------------
# Responses


def _usage(finished: Finished) -> dict[str, Any]:
    return {
        "input_tokens": finished.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": finished.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _failure(error: Exception) -> tuple[BackendError | None, str]:
    """The BackendError behind `error` (None for a bug, which is logged), and its message."""
    backend_error = as_backend_error(error)
    if backend_error is None:
        log.error("unexpected error while streaming a response", exc_info=error)
        return None, SERVER_ERROR_MESSAGE
    return backend_error, backend_error.message


class ResponsesFormat:
    """One response: its streamed events (a `StreamFormat`), or its whole object.

    Output items come in the order the reply makes them: a message for a run of text, a
    `function_call` item for each call the `CallParser` finds (with tools offered). Text
    that is only whitespace opens no message (a reply with no other output is still one
    message, opened at its end), as OpenAI does, so a generation that fails on entry
    streams no output item; an open message is closed before a call's item is added, so
    each item's events are contiguous.
    """

    def __init__(self, parsed: ResponsesRequest) -> None:
        self._parsed = parsed
        self._id = "resp_" + secrets.token_hex(24)
        self._created_at = int(time.time())
        self._sequence = 0
        tools = parsed.offered_tools
        self._parser = CallParser(tools, parsed.tool_choice.forced) if tools else None
        self._output: list[dict[str, Any]] = []  # the closed items
        self._message_id: str | None = None  # the open message, always after them
        self._texts: list[str] = []
        self._held = ""  # whitespace that has not opened a message

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        *,
        incomplete: bool = False,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The `response` object as it stands in `status`."""
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "model": self._parsed.model,
            "output": output,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "truncation": "disabled",
            "usage": usage,
            **self._parsed.echo,
        }

    def _message(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def finished_response(self, whole: Whole) -> dict[str, Any]:
        """The whole response of a generation that was not streamed. Its chunks take the
        streaming path (the events are dropped), so both give the same output."""
        for chunk in whole.chunks:
            self.token(chunk)
        final, _ = self._end(whole.finished)
        return final

    # StreamFormat

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {dumps(data)}\n\n".encode()

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._message_id, "output_index": len(self._output), "content_index": 0}

    def _text(self, text: str, *, force: bool = False) -> list[bytes]:
        """Text for the open message, opening one if the text (with `force`, any) is more
        than whitespace."""
        events: list[bytes] = []
        if self._message_id is None:
            self._held += text
            if not (force or self._held.strip()):
                return []
            text, self._held = self._held, ""
            self._message_id, self._texts = "msg_" + secrets.token_hex(24), []
            added = self._message("in_progress", [])
            events = [
                self._event(
                    "response.output_item.added", output_index=len(self._output), item=added
                ),
                self._event("response.content_part.added", **self._where(), part=_text_part("")),
            ]
        if text:
            self._texts.append(text)
            events.append(
                self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])
            )
        return events

    def _close(self, status: str) -> list[bytes]:
        """The open message's done events; it joins the closed items."""
        if self._message_id is None:
            return []
        text = "".join(self._texts)
        item = self._message(status, [_text_part(text)])
        events = [
            self._event("response.output_text.done", **self._where(), text=text, logprobs=[]),
            self._event("response.content_part.done", **self._where(), part=_text_part(text)),
            self._event("response.output_item.done", output_index=len(self._output), item=item),
        ]
        self._output.append(item)
        self._message_id = None
        return events

    def _call(self, call: ToolCall) -> list[bytes]:
        """A call's item, whole: its arguments are one delta. Whitespace before it is
        dropped."""
        events = self._close("completed")
        self._held = ""
        index = len(self._output)
        item = {
            "id": "fc_" + secrets.token_hex(24),
            "type": "function_call",
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
        self._output.append(item)
        added = {**item, "arguments": "", "status": "in_progress"}
        where = {"item_id": item["id"], "output_index": index}
        return [
            *events,
            self._event("response.output_item.added", output_index=index, item=added),
            self._event("response.function_call_arguments.delta", **where, delta=call.arguments),
            self._event("response.function_call_arguments.done", **where, arguments=call.arguments),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _pieces(self, text: str, calls: list[ToolCall]) -> list[bytes]:
        events = self._text(text)
        for call in calls:
            events += self._call(call)
        return events

    def _end(self, finished: Finished) -> tuple[dict[str, Any], list[bytes]]:
        """The final response, and the events that close the output."""
        events = [] if self._parser is None else self._pieces(*self._parser.finish())
        if not self._output:
            events += self._text("", force=True)
        incomplete = finished.finish_reason == "length"
        status = "incomplete" if incomplete else "completed"
        events += self._close(status)
        final = self.response(status, self._output, _usage(finished), incomplete=incomplete)
        return final, events

    def start(self) -> list[bytes]:
        in_progress = self.response("in_progress", [])
        return [
            self._event("response.created", response=in_progress),
            self._event("response.in_progress", response=in_progress),
        ]

    def token(self, chunk: TokenOut) -> list[bytes]:
        if self._parser is None:
            return self._text(chunk.text)
        return self._pieces(*self._parser.feed(chunk.text))

    def finish(self, finished: Finished) -> list[bytes]:
        final, events = self._end(finished)
        return [*events, self._event(f"response.{final['status']}", response=final)]

    def error(self, error: Exception) -> list[bytes]:
        """An `error` event, then `response.failed`: the stream's terminal event."""
        backend_error, message = _failure(error)
        code = "server_error"
        if backend_error is not None:
            code = backend_error.code or backend_error.kind
        param = backend_error.param if backend_error is not None else None
        # `response.error.code` is a closed set in OpenAI's schema.
        failed_code = (
            "invalid_prompt" if isinstance(backend_error, InvalidRequest) else "server_error"
        )
        output = list(self._output)
        if self._message_id is not None:
            output.append(self._message("incomplete", [_text_part("".join(self._texts))]))
        failed = self.response("failed", output, error={"code": failed_code, "message": message})
        return [
            self._event("error", code=code, message=message, param=param),
            self._event("response.failed", response=failed),
        ]


# ---------------------------------------------------------------------------------------------
# Routes


def register_responses(app: QuartTrio, backend: Backend) -> None:
    """Add `POST /v1/responses`, and a 404 saying why for the routes of stored responses."""

    @app.post("/v1/responses")
    async def create_response() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            parsed = parse_responses_request(decode_json_body(raw))
        except InvalidRequest as error:
            return backend_error_response(error)
        if all(card.model_id != parsed.model for card in backend.models()):
            # Checked before a stream starts, so even a streaming client gets a real 404.
            return backend_error_response(UnknownModel(parsed.model))
        form = ResponsesFormat(parsed)
        generation = (backend, parsed.model, parsed.messages, parsed.params)
        if parsed.stream:
            return TrioResponse(
                GenerationStream(*generation, form, parsed.offered_tools),
                status=200,
                headers=SSE_HEADERS,
                content_type=SSE_CONTENT_TYPE,
            )
        try:
            whole = await whole_generation(*generation, parsed.offered_tools)
        except Exception as error:
            backend_error = as_backend_error(error)
            if backend_error is None:
                raise  # the app's catch-all logs it and answers a JSON 500
            return backend_error_response(backend_error)
        return json_response(form.finished_response(whole))

    @app.route("/v1/responses/<path:response_id>", methods=["GET", "POST", "DELETE"])
    async def stored_response(response_id: str) -> TrioResponse:
        return error_response(
            404,
            f"No response '{response_id.split('/')[0]}': {NOT_STORED}.",
            type="not_found_error",
            code="response_not_found",
        )
