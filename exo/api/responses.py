"""OpenAI's Responses API: `POST /v1/responses`, streamed or not, text in and text out.

A request is validated strictly, as in the chat-completions dialect, and becomes the same
chat messages and sampling parameters. exo keeps no responses: every response is answered
as if `store` were false, so `previous_response_id`, `conversation` and `background` are
refused and `GET /v1/responses/{id}` is a 404 saying so. A stream is OpenAI's typed
server-sent events (`event:` + `data:`, each with a rising `sequence_number`), so the
official client's `responses.stream()` accumulator can rebuild the final response.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

from attrs import frozen
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
from exo.api.openai import CONTENT_PART_SEPARATOR, ROLES, SSE_CONTENT_TYPE, SSE_HEADERS
from exo.api.streaming import GenerationStream, whole_generation
from exo.api.validation import (
    decode_json_body,
    invalid,
    is_int,
    optional_number,
    optional_positive_int,
    text_parts,
)
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut

log = logging.getLogger(__name__)

# Input message roles (no `tool`: tool results would come as function_call_output items).
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


# ---------------------------------------------------------------------------------------------
# Validation


def _parse_content(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise invalid(f"'{where}' must be a string or a non-empty list of text parts.", where)
    texts = text_parts(value, where, TEXT_PARTS, "only text input is supported")
    return CONTENT_PART_SEPARATOR.join(texts)


def parse_input(value: object) -> tuple[ChatMessage, ...]:
    """`input` as chat messages: a string is one user turn; items must be text messages."""
    if isinstance(value, str):
        return (ChatMessage("user", value),)
    if not isinstance(value, list) or not value:
        raise invalid("'input' must be a string or a non-empty list of input items.", "input")
    messages: list[ChatMessage] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object with 'role' and 'content'.", where)
        kind = item.get("type", "message")
        if kind != "message":
            raise invalid(
                f"'{where}' is a {kind!r} item; only message items with text content are "
                "supported on /v1/responses.",
                f"{where}.type",
            )
        role = item.get("role")
        if not isinstance(role, str) or role not in INPUT_ROLES:
            raise invalid(
                f"'{where}.role' must be one of {', '.join(sorted(INPUT_ROLES))}; got {role!r}.",
                f"{where}.role",
            )
        content = _parse_content(item.get("content"), f"{where}.content")
        messages.append(ChatMessage(role=INPUT_ROLES[role], content=content))
    return tuple(messages)


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
    if body.get("tools") not in (None, []):
        raise invalid("Tools are not supported on /v1/responses yet.", "tools")
    if body.get("tool_choice") not in (None, "auto", "none"):
        raise invalid(
            "'tool_choice' must be 'auto' or 'none': tools are not supported on /v1/responses yet.",
            "tool_choice",
        )
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
        "tool_choice": body.get("tool_choice") or "auto",
        "user": user,
    }
    return ResponsesRequest(model, messages, params, stream, echo)


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

    The output message is opened by its first text (or at the end of an empty reply), as
    OpenAI does, so a generation that fails on entry streams no output item at all.
    """

    def __init__(self, parsed: ResponsesRequest) -> None:
        self._parsed = parsed
        self._id = "resp_" + secrets.token_hex(24)
        self._item_id = "msg_" + secrets.token_hex(24)
        self._created_at = int(time.time())
        self._sequence = 0
        self._texts: list[str] = []
        self._opened = False

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
            "tools": [],
            "truncation": "disabled",
            "usage": usage,
            **self._parsed.echo,
        }

    def _message(self, status: str) -> dict[str, Any]:
        content = [_text_part("".join(self._texts))] if self._opened else []
        return {
            "id": self._item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def finished_response(self, text: str, finished: Finished) -> dict[str, Any]:
        """The whole response once the generation ended with `text`."""
        self._texts, self._opened = [text], True
        incomplete = finished.finish_reason == "length"
        status = "incomplete" if incomplete else "completed"
        return self.response(
            status, [self._message(status)], _usage(finished), incomplete=incomplete
        )

    # StreamFormat

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {dumps(data)}\n\n".encode()

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._item_id, "output_index": 0, "content_index": 0}

    def _open(self) -> list[bytes]:
        if self._opened:
            return []
        added = self._event(
            "response.output_item.added", output_index=0, item=self._message("in_progress")
        )
        self._opened = True
        return [
            added,
            self._event("response.content_part.added", **self._where(), part=_text_part("")),
        ]

    def start(self) -> list[bytes]:
        in_progress = self.response("in_progress", [])
        return [
            self._event("response.created", response=in_progress),
            self._event("response.in_progress", response=in_progress),
        ]

    def token(self, chunk: TokenOut) -> list[bytes]:
        if not chunk.text:
            return []
        events = self._open()
        self._texts.append(chunk.text)
        delta = self._event(
            "response.output_text.delta", **self._where(), delta=chunk.text, logprobs=[]
        )
        return [*events, delta]

    def finish(self, finished: Finished) -> list[bytes]:
        events = self._open()
        text = "".join(self._texts)
        final = self.finished_response(text, finished)
        [item] = final["output"]
        return [
            *events,
            self._event("response.output_text.done", **self._where(), text=text, logprobs=[]),
            self._event("response.content_part.done", **self._where(), part=_text_part(text)),
            self._event("response.output_item.done", output_index=0, item=item),
            self._event(f"response.{final['status']}", response=final),
        ]

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
        output = [self._message("incomplete")] if self._opened else []
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
                GenerationStream(*generation, form),
                status=200,
                headers=SSE_HEADERS,
                content_type=SSE_CONTENT_TYPE,
            )
        try:
            whole = await whole_generation(*generation)
        except Exception as error:
            backend_error = as_backend_error(error)
            if backend_error is None:
                raise  # the app's catch-all logs it and answers a JSON 500
            return backend_error_response(backend_error)
        return json_response(form.finished_response(whole.text, whole.finished))

    @app.route("/v1/responses/<path:response_id>", methods=["GET", "POST", "DELETE"])
    async def stored_response(response_id: str) -> TrioResponse:
        return error_response(
            404,
            f"No response '{response_id.split('/')[0]}': {NOT_STORED}.",
            type="not_found_error",
            code="response_not_found",
        )
