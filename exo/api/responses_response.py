"""What the OpenAI Responses route sends, as typed models: the `response` object (whole, or
as the stream's `response.*` events carry it) and every stream event.

The encoders in `responses.py` build these, and `/openapi.json` takes their schemas, the
stream's as a union of its events tagged by `type`, each with the `sequence_number`
clients order them by. Tests check what is sent against OpenAI's published schemas
(tests/api/test_published_schemas.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from exo.engine.protocol import Finished

ResponseStatus = Literal["completed", "incomplete", "failed", "in_progress"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputTokensDetails(Struct, frozen=True):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(Struct, frozen=True):
    reasoning_tokens: int


class ResponseUsage(Struct, frozen=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int

    @classmethod
    def of(cls, finished: Finished) -> ResponseUsage:
        prompt, completion = finished.prompt_tokens, finished.completion_tokens
        cached = InputTokensDetails(finished.cached_tokens, 0)
        return cls(prompt, cached, completion, OutputTokensDetails(0), prompt + completion)


class OutputTextPart(Struct, frozen=True, tag_field="type", tag="output_text"):
    """A message's text; exo sends no annotations or log-probabilities (always empty)."""

    text: str
    annotations: list[Any]
    logprobs: list[Any]

    @classmethod
    def of(cls, text: str) -> OutputTextPart:
        return cls(text, [], [])


class OutputMessage(Struct, frozen=True, tag_field="type", tag="message"):
    id: str
    status: ItemStatus
    role: Literal["assistant"]
    content: list[OutputTextPart]


class FunctionCallItem(Struct, frozen=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str  # JSON text; empty while the item is in progress
    status: Literal["in_progress", "completed"]


OutputItem = OutputMessage | FunctionCallItem


class ResponseError(Struct, frozen=True):
    # A closed set in OpenAI's schema; `error` events carry the finer code.
    code: Literal["invalid_prompt", "server_error"]
    message: str


class IncompleteDetails(Struct, frozen=True):
    reason: Literal["max_output_tokens"]


class Reasoning(Struct, frozen=True):
    """Always null: exo runs no reasoning models' effort controls."""

    effort: None
    summary: None


class PlainTextFormat(Struct, frozen=True, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(Struct, frozen=True, tag_field="type", tag="json_object"):
    pass


class JsonSchemaFormat(Struct, frozen=True, tag_field="type", tag="json_schema"):
    name: str
    schema: dict[str, Any]
    strict: bool | None
    description: str | UnsetType = UNSET


EchoedFormat = PlainTextFormat | JsonObjectFormat | JsonSchemaFormat


class TextConfig(Struct, frozen=True):
    format: EchoedFormat


class FunctionTool(Struct, frozen=True, tag_field="type", tag="function"):
    """A tool as the request offered it (null: a field not given)."""

    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class FunctionChoice(Struct, frozen=True, tag_field="type", tag="function"):
    name: str


EchoedChoice = Literal["none", "auto", "required"] | FunctionChoice


class Echoed(Struct, frozen=True, kw_only=True):
    """The request's settings a response repeats, as the request gave them (or their
    defaults); `user` is left out when not given (a string in OpenAI's schema)."""

    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    temperature: float
    top_p: float
    text: TextConfig
    tool_choice: EchoedChoice
    tools: list[FunctionTool]
    user: str | UnsetType = UNSET


class Response(Struct, frozen=True, kw_only=True):
    """The `response` object: whole, or as it stands when a stream event carries it.
    exo stores none, so `store` is false and `previous_response_id` null; `usage` is
    there once known (never null in OpenAI's schema)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: ResponseStatus
    background: bool
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    model: str
    output: Annotated[
        list[OutputItem],
        Meta(
            description="In the reply's order: a message per run of text, a function_call per call."
        ),
    ]
    previous_response_id: None
    reasoning: Reasoning
    store: bool
    truncation: Literal["disabled"]
    usage: ResponseUsage | UnsetType = UNSET
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    temperature: float
    top_p: float
    text: TextConfig
    tool_choice: EchoedChoice
    tools: list[FunctionTool]
    user: str | UnsetType = UNSET


# ---------------------------------------------------------------------------------------------
# Stream events, named as in OpenAI's schema; the private bases hold the fields events share


class _Event(Struct, frozen=True, tag_field="type"):
    sequence_number: int


class _ResponseEvent(_Event, frozen=True):
    response: Response


class ResponseCreatedEvent(_ResponseEvent, frozen=True, tag="response.created"):
    pass


class ResponseInProgressEvent(_ResponseEvent, frozen=True, tag="response.in_progress"):
    pass


class ResponseCompletedEvent(_ResponseEvent, frozen=True, tag="response.completed"):
    pass


class ResponseIncompleteEvent(_ResponseEvent, frozen=True, tag="response.incomplete"):
    pass


class ResponseFailedEvent(_ResponseEvent, frozen=True, tag="response.failed"):
    pass


class _ItemEvent(_Event, frozen=True):
    output_index: int
    item: OutputItem


class ResponseOutputItemAddedEvent(_ItemEvent, frozen=True, tag="response.output_item.added"):
    pass


class ResponseOutputItemDoneEvent(_ItemEvent, frozen=True, tag="response.output_item.done"):
    pass


class _ContentEvent(_Event, frozen=True):
    """Where in the output the event's text is."""

    item_id: str
    output_index: int
    content_index: int


class ResponseContentPartAddedEvent(_ContentEvent, frozen=True, tag="response.content_part.added"):
    part: OutputTextPart


class ResponseContentPartDoneEvent(_ContentEvent, frozen=True, tag="response.content_part.done"):
    part: OutputTextPart


class ResponseTextDeltaEvent(_ContentEvent, frozen=True, tag="response.output_text.delta"):
    delta: str
    logprobs: list[Any]


class ResponseTextDoneEvent(_ContentEvent, frozen=True, tag="response.output_text.done"):
    text: str
    logprobs: list[Any]


class _ArgumentsEvent(_Event, frozen=True):
    item_id: str
    output_index: int


class ResponseFunctionCallArgumentsDeltaEvent(
    _ArgumentsEvent, frozen=True, tag="response.function_call_arguments.delta"
):
    delta: str


class ResponseFunctionCallArgumentsDoneEvent(
    _ArgumentsEvent, frozen=True, tag="response.function_call_arguments.done"
):
    """`name` is required by OpenAI's schema, though its own client does not check."""

    name: str
    arguments: str


class ResponseErrorEvent(_Event, frozen=True, tag="error"):
    """A failure mid-stream (then `response.failed` ends it); `code` is the error's kind or
    code, as the JSON errors give it."""

    code: str
    message: str
    param: str | None


ResponseStreamEvent = (
    ResponseCreatedEvent
    | ResponseInProgressEvent
    | ResponseOutputItemAddedEvent
    | ResponseContentPartAddedEvent
    | ResponseTextDeltaEvent
    | ResponseTextDoneEvent
    | ResponseContentPartDoneEvent
    | ResponseOutputItemDoneEvent
    | ResponseFunctionCallArgumentsDeltaEvent
    | ResponseFunctionCallArgumentsDoneEvent
    | ResponseCompletedEvent
    | ResponseIncompleteEvent
    | ResponseFailedEvent
    | ResponseErrorEvent
)
