"""OpenAI's Responses API: `POST /v1/responses`, streamed or not: text, and function tools.

A request is validated strictly (`exo.api.responses_request`), as in the chat-completions
dialect, and becomes the same chat messages, sampling parameters and tools; function
calls are parsed from the reply by the same `CallParser` and come out as `function_call`
items. exo keeps no responses:
every response is answered as if `store` were false, so `previous_response_id`,
`conversation` and `background` are refused and `GET /v1/responses/{id}` is a 404 saying
so. A stream is OpenAI's typed server-sent events (`event:` + `data:`, each with a rising
`sequence_number`), so the official client's `responses.stream()` accumulator can rebuild
the final response.
"""

from __future__ import annotations

import logging
import secrets

from msgspec import UNSET, UnsetType, structs, to_builtins
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend, BackendError, InvalidRequest, lookup_model
from exo.api.clock import ApiClock
from exo.api.errors import (
    SERVER_ERROR_MESSAGE,
    as_backend_error,
    backend_error_response,
    error_response,
    json_response,
)
from exo.api.responses_request import (
    NOT_STORED,
    ResponsesRequest,
    parse_responses_request,
)
from exo.api.responses_response import (
    FunctionCallItem,
    IncompleteDetails,
    ItemStatus,
    OutputItem,
    OutputMessage,
    OutputTextPart,
    Reasoning,
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseError,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseStatus,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
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
from exo.engine.protocol import Finished, TokenOut, ToolCall

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Responses


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

    def __init__(self, parsed: ResponsesRequest, created_at: int) -> None:
        self._parsed = parsed
        self._id = "resp_" + secrets.token_hex(24)
        self._created_at = created_at
        self._sequence = 0
        tools = parsed.offered_tools
        self._parser = CallParser(tools, parsed.tool_choice.forced) if tools else None
        self._output: list[OutputItem] = []  # the closed items
        self._message_id: str | None = None  # the open message, always after them
        self._texts: list[str] = []
        self._held = ""  # whitespace that has not opened a message

    def response(
        self,
        status: ResponseStatus,
        output: list[OutputItem],
        usage: ResponseUsage | UnsetType = UNSET,
        *,
        incomplete: bool = False,
        error: ResponseError | None = None,
    ) -> Response:
        """The `response` object as it stands in `status`; `usage` only once known."""
        return Response(
            id=self._id,
            object="response",
            created_at=self._created_at,
            status=status,
            background=False,
            error=error,
            incomplete_details=IncompleteDetails("max_output_tokens") if incomplete else None,
            model=self._parsed.model,
            output=output,
            previous_response_id=None,
            reasoning=Reasoning(None, None),
            store=False,
            truncation="disabled",
            usage=usage,
            **structs.asdict(self._parsed.echo),
        )

    def _message(self, status: ItemStatus, text: str | None) -> OutputMessage:
        """The open message; `text` None: before its content part is added."""
        assert self._message_id is not None
        content = [] if text is None else [OutputTextPart.of(text)]
        return OutputMessage(self._message_id, status, "assistant", content)

    def finished_response(self, whole: Whole) -> Response:
        """The whole response of a generation that was not streamed. Its chunks take the
        streaming path (the events are dropped), so both give the same output."""
        for chunk in whole.chunks:
            self.token(chunk)
        final, _ = self._end(whole.finished)
        return final

    # StreamFormat

    def _next(self) -> int:
        """The next event's `sequence_number`."""
        self._sequence += 1
        return self._sequence - 1

    def _where(self) -> tuple[int, str, int, int]:
        """The next event's number, and where the open message's text is."""
        assert self._message_id is not None
        return self._next(), self._message_id, len(self._output), 0

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
            added = self._message("in_progress", None)
            index = len(self._output)
            events = [
                _event(ResponseOutputItemAddedEvent(self._next(), index, added)),
                _event(ResponseContentPartAddedEvent(*self._where(), OutputTextPart.of(""))),
            ]
        if text:
            self._texts.append(text)
            events.append(_event(ResponseTextDeltaEvent(*self._where(), text, [])))
        return events

    def _close(self, status: ItemStatus) -> list[bytes]:
        """The open message's done events; it joins the closed items."""
        if self._message_id is None:
            return []
        text = "".join(self._texts)
        item = self._message(status, text)
        index = len(self._output)
        events = [
            _event(ResponseTextDoneEvent(*self._where(), text, [])),
            _event(ResponseContentPartDoneEvent(*self._where(), OutputTextPart.of(text))),
            _event(ResponseOutputItemDoneEvent(self._next(), index, item)),
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
        item_id = "fc_" + secrets.token_hex(24)
        item = FunctionCallItem(item_id, call.id, call.name, call.arguments, "completed")
        self._output.append(item)
        added = FunctionCallItem(item_id, call.id, call.name, "", "in_progress")
        arguments = call.arguments
        return [
            *events,
            _event(ResponseOutputItemAddedEvent(self._next(), index, added)),
            _event(
                ResponseFunctionCallArgumentsDeltaEvent(self._next(), item_id, index, arguments)
            ),
            _event(
                ResponseFunctionCallArgumentsDoneEvent(
                    self._next(), item_id, index, call.name, arguments
                )
            ),
            _event(ResponseOutputItemDoneEvent(self._next(), index, item)),
        ]

    def _pieces(self, text: str, calls: list[ToolCall]) -> list[bytes]:
        events = self._text(text)
        for call in calls:
            events += self._call(call)
        return events

    def _end(self, finished: Finished) -> tuple[Response, list[bytes]]:
        """The final response, and the events that close the output."""
        events = [] if self._parser is None else self._pieces(*self._parser.finish())
        if not self._output:
            events += self._text("", force=True)
        incomplete = finished.finish_reason == "length"
        status = "incomplete" if incomplete else "completed"
        events += self._close(status)
        usage = ResponseUsage.of(finished)
        final = self.response(status, self._output, usage, incomplete=incomplete)
        return final, events

    def start(self) -> list[bytes]:
        in_progress = self.response("in_progress", [])
        return [
            _event(ResponseCreatedEvent(self._next(), in_progress)),
            _event(ResponseInProgressEvent(self._next(), in_progress)),
        ]

    def token(self, chunk: TokenOut) -> list[bytes]:
        if self._parser is None:
            return self._text(chunk.text)
        return self._pieces(*self._parser.feed(chunk.text))

    def finish(self, finished: Finished) -> list[bytes]:
        final, events = self._end(finished)
        end = ResponseIncompleteEvent if final.status == "incomplete" else ResponseCompletedEvent
        return [*events, _event(end(self._next(), final))]

    def error(self, error: Exception) -> list[bytes]:
        """An `error` event, then `response.failed`: the stream's terminal event."""
        backend_error, message = _failure(error)
        code = "server_error"
        if backend_error is not None:
            code = backend_error.code or backend_error.kind
        param = backend_error.param if backend_error is not None else None
        failed_code = (
            "invalid_prompt" if isinstance(backend_error, InvalidRequest) else "server_error"
        )
        output = list(self._output)
        if self._message_id is not None:
            output.append(self._message("incomplete", "".join(self._texts)))
        failed = self.response("failed", output, error=ResponseError(failed_code, message))
        return [
            _event(ResponseErrorEvent(self._next(), code, message, param)),
            _event(ResponseFailedEvent(self._next(), failed)),
        ]


def _event(event: ResponseStreamEvent) -> bytes:
    return named_sse_event(to_builtins(event))


# ---------------------------------------------------------------------------------------------
# Routes


def register_responses(app: QuartTrio, backend: Backend, clock: ApiClock) -> None:
    """Add `POST /v1/responses`, and a 404 saying why for the routes of stored responses."""

    @app.post("/v1/responses")
    async def create_response() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            parsed = parse_responses_request(decode_json_body(raw))
        except InvalidRequest as error:
            return backend_error_response(error)
        found = await lookup_model(backend, parsed.model)
        if isinstance(found, BackendError):
            return backend_error_response(found)
        form = ResponsesFormat(parsed, int(clock.wall()))
        generation = (backend, parsed.model, parsed.messages, parsed.params)
        if parsed.stream:
            body = GenerationStream(*generation, form, parsed.offered_tools)
            return await streamed_response(
                body, backend_error_response, SSE_CONTENT_TYPE, SSE_HEADERS
            )
        try:
            whole = await whole_generation(*generation, parsed.offered_tools)
        except Exception as error:
            backend_error = as_backend_error(error)
            if backend_error is None:
                raise  # the app's catch-all logs it and answers a JSON 500
            return backend_error_response(backend_error)
        return json_response(to_builtins(form.finished_response(whole)))

    @app.route("/v1/responses/<path:response_id>", methods=["GET", "POST", "DELETE"])
    async def stored_response(response_id: str) -> TrioResponse:
        return error_response(
            404,
            f"No response '{response_id.split('/')[0]}': {NOT_STORED}.",
            type="not_found_error",
            code="response_not_found",
        )
