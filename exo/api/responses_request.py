"""OpenAI Responses request bodies: typed models (`typed_body.py`) for `POST
/v1/responses`, and what a checked body becomes for the backend.

Input items become chat messages (function calls and their outputs included); fields
that need stored responses are refused, as are built-in tools; unknown fields are
ignored. Every violation is an `InvalidRequest` naming the field in `param`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from attrs import evolve, frozen
from msgspec import UNSET, Meta

from exo.api.backend import InvalidRequest
from exo.api.errors import dumps
from exo.api.openai_request import NO_TOOLS, ROLES, engine_tool
from exo.api.responses_response import (
    Echoed,
    EchoedChoice,
    EchoedFormat,
    FunctionChoice,
    FunctionTool,
    JsonObjectFormat,
    JsonSchemaFormat,
    PlainTextFormat,
    TextConfig,
)
from exo.api.tool_calls import (
    MAX_TOOLS,
    ToolChoice,
    checked_tool_choice,
    forced_call_schema,
    offered,
)
from exo.api.typed_body import (
    ModelName,
    NonEmpty,
    convert_body,
    joined_text,
    refuse_duplicate_names,
)
from exo.api.validation import INT64_MAX
from exo.engine.protocol import ChatMessage, SamplingParams, Tool, ToolCall

# The schema that `text.format: {"type": "json_object"}` constrains the reply to.
JSON_OBJECT_SCHEMA = '{"type":"object"}'
NOT_STORED = "exo does not store responses (every response is answered as if 'store' were false)"
WHOLE_INPUT = "send the whole conversation in 'input'"
# OpenAI's limits on `metadata`.
METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512
# Advice added to an error at these fields (`typed_body.convert_body`).
HINTS = {
    "input[].type": "only message, function_call and function_call_output items are "
    "supported on /v1/responses",
    "input[].content[].type": "only text input is supported",
    "input[].output[].type": "only text input is supported",
    "tools[].type": "exo runs no built-in tools (web_search, file_search, code_interpreter, "
    "computer_use, mcp, ...)",
    "tool_choice.type": "only function tools are supported",
    "previous_response_id": f"{NOT_STORED}; {WHOLE_INPUT}",
    "conversation": f"{NOT_STORED}; {WHOLE_INPUT}",
    "prompt": "stored prompt templates are not supported",
    "top_logprobs": "log-probabilities are not supported on /v1/responses yet",
}


class InputText(msgspec.Struct, tag="input_text", tag_field="type"):
    text: str


class OutputText(msgspec.Struct, tag="output_text", tag_field="type"):
    """How a replayed assistant turn's text arrives."""

    text: str


Content = str | Annotated[list[InputText | OutputText], Meta(min_length=1)]


class ResponsesInputItem(msgspec.Struct, kw_only=True):
    """A message (the default `type`), or an earlier turn's `function_call` (joined to the
    assistant turn before it) or `function_call_output`; each type needs its fields."""

    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: Content | None = None
    call_id: NonEmpty | None = None
    name: NonEmpty | None = None
    arguments: Annotated[str, Meta(min_length=1, description="JSON text.")] | None = None
    output: Content | None = None

    def __post_init__(self) -> None:
        needed = {
            "message": ("role", "content"),
            "function_call": ("call_id", "name", "arguments"),
            "function_call_output": ("call_id", "output"),
        }[self.type]
        for name in needed:
            if getattr(self, name) is None:
                raise ValueError(f"`{name}`: is required in a {self.type} item")


class ResponsesFunctionTool(msgspec.Struct, kw_only=True):
    """A function the model may call; a null field is one not given."""

    type: Literal["function"]
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: Annotated[dict[str, Any], Meta(description="A JSON schema.")] | None = None
    strict: bool | None = None


class ResponsesNamedChoice(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    name: str


class TextFormatText(msgspec.Struct, tag="text", tag_field="type"):
    pass


class TextFormatJsonObject(msgspec.Struct, tag="json_object", tag_field="type"):
    pass


class TextFormatJsonSchema(msgspec.Struct, tag="json_schema", tag_field="type", kw_only=True):
    name: NonEmpty
    schema: dict[str, Any]
    strict: bool | None = None
    description: str | None = None


class ResponsesText(msgspec.Struct, kw_only=True):
    format: TextFormatText | TextFormatJsonObject | TextFormatJsonSchema | None = None


MetadataKey = Annotated[str, Meta(max_length=METADATA_MAX_KEY)]
MetadataValue = Annotated[str, Meta(max_length=METADATA_MAX_VALUE)]
Refused = Annotated[None, Meta(description="Refused: exo stores no responses.")]


class ResponseRequest(msgspec.Struct, kw_only=True):
    """A `POST /v1/responses` body."""

    model: ModelName
    input: str | Annotated[list[ResponsesInputItem], Meta(min_length=1)]
    instructions: str | None = None
    temperature: Annotated[float, Meta(ge=0, le=2, description="Default 1.")] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1, description="Default 1.")] | None = None
    max_output_tokens: Annotated[int, Meta(ge=1, le=INT64_MAX)] | None = None
    stream: bool | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    reasoning: Annotated[dict[str, Any], Meta(description="Accepted and ignored.")] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: (
        Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=METADATA_MAX_PAIRS)] | None
    ) = None
    text: ResponsesText | None = None
    tools: Annotated[list[ResponsesFunctionTool], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: (
        Annotated[
            Literal["none", "auto", "required"] | ResponsesNamedChoice,
            Meta(
                description="`required` or a named function needs `tools`, the name among "
                "them; a forced call cannot be combined with a JSON `text.format`."
            ),
        ]
        | None
    ) = None
    previous_response_id: Refused = None
    conversation: Refused = None
    background: Annotated[
        bool,
        Meta(
            description="Only false: exo stores no responses.", extra_json_schema={"const": False}
        ),
    ] = False
    prompt: Annotated[None, Meta(description="Stored prompt templates: refused.")] = None
    top_logprobs: Annotated[int, Meta(ge=0, le=0, description="Only 0.")] | None = None
    include: (
        Annotated[
            list[str],
            Meta(
                extra_json_schema={"not": {"contains": {"const": "message.output_text.logprobs"}}}
            ),
        ]
        | None
    ) = None

    def __post_init__(self) -> None:
        refuse_duplicate_names([tool.name for tool in self.tools or ()], "tools[{i}].name")
        if self.background:
            raise ValueError(f"`background`: Background mode needs stored responses: {NOT_STORED}.")
        if "message.output_text.logprobs" in (self.include or ()):
            raise ValueError("`include`: Log-probabilities are not supported on /v1/responses yet.")


@frozen
class ResponsesRequest:
    """A checked `POST /v1/responses` body; `echo` holds the fields the response repeats."""

    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    stream: bool
    echo: Echoed
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = NO_TOOLS

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        return offered(self.tools, self.tool_choice)


def parse_responses_request(body: object) -> ResponsesRequest:
    """A checked `POST /v1/responses` body; raises InvalidRequest naming the field."""
    asked = convert_body(body, ResponseRequest, HINTS)
    messages = _messages(asked.input)
    if asked.instructions is not None:
        messages = (ChatMessage("system", asked.instructions), *messages)
    text_format, json_schema = _text_format(asked.text)
    tools = tuple(engine_tool(t.name, t.description, t.parameters) for t in asked.tools or ())
    tool_choice, echoed_choice = _tool_choice(asked.tool_choice, tools)
    if tool_choice.forced:
        if json_schema is not None:
            raise InvalidRequest(
                "A forced 'tool_choice' and a JSON 'text.format' cannot both constrain the reply.",
                "tool_choice",
            )
        json_schema = forced_call_schema(tools, tool_choice)
    params = SamplingParams(
        temperature=1.0 if asked.temperature is None else asked.temperature,
        top_p=1.0 if asked.top_p is None else asked.top_p,
        max_tokens=asked.max_output_tokens,
        json_schema=json_schema,
    )
    echo = Echoed(
        instructions=asked.instructions,
        max_output_tokens=asked.max_output_tokens,
        metadata=dict(asked.metadata or {}),
        parallel_tool_calls=asked.parallel_tool_calls is not False,
        temperature=params.temperature,
        top_p=params.top_p,
        text=TextConfig(text_format),
        tool_choice=echoed_choice,
        tools=[
            FunctionTool(t.name, t.description, t.parameters, t.strict) for t in asked.tools or ()
        ],
        # A string in OpenAI's schema, so absent rather than null.
        user=UNSET if asked.user is None else asked.user,
    )
    return ResponsesRequest(
        asked.model, messages, params, bool(asked.stream), echo, tools, tool_choice
    )


def _messages(value: str | list[ResponsesInputItem]) -> tuple[ChatMessage, ...]:
    """`input` as chat messages: a string is one user turn; items are text messages, the
    function calls of earlier turns and their outputs (as `tool` messages).

    Calls join the assistant turn right before them (its text, or the calls before), as
    chat templates render one assistant turn's text and calls together.
    """
    if isinstance(value, str):
        return (ChatMessage("user", value),)
    messages: list[ChatMessage] = []
    for item in value:
        if item.type == "message":
            assert item.role is not None and item.content is not None  # checked
            messages.append(ChatMessage(ROLES[item.role], joined_text(item.content)))
        elif item.type == "function_call":
            assert item.call_id and item.name and item.arguments  # checked
            call = ToolCall(item.call_id, item.name, item.arguments)
            if messages and messages[-1].role == "assistant":
                messages[-1] = evolve(messages[-1], tool_calls=(*messages[-1].tool_calls, call))
            else:
                messages.append(ChatMessage("assistant", "", tool_calls=(call,)))
        else:
            assert item.output is not None  # checked
            messages.append(
                ChatMessage("tool", joined_text(item.output), tool_call_id=item.call_id)
            )
    return tuple(messages)


def _text_format(text: ResponsesText | None) -> tuple[EchoedFormat, str | None]:
    """`text.format` as echoed back, and the JSON schema (as JSON text) it constrains to."""
    match text.format if text is not None else None:
        case TextFormatJsonObject():
            return JsonObjectFormat(), JSON_OBJECT_SCHEMA
        case TextFormatJsonSchema(name=name, schema=schema, strict=strict, description=about):
            described = UNSET if about is None else about
            return JsonSchemaFormat(name, schema, strict, described), dumps(schema)
        case _:
            return PlainTextFormat(), None


def _tool_choice(
    value: Literal["none", "auto", "required"] | ResponsesNamedChoice | None,
    tools: tuple[Tool, ...],
) -> tuple[ToolChoice, EchoedChoice]:
    """`tool_choice` checked against `tools` by chat's rules, and as the response echoes
    it. "auto" without tools offers none (chat refuses it, but this route accepted it
    before it had tools)."""
    if value is None or (value == "auto" and not tools):
        return ToolChoice("auto" if tools else "none"), "auto"
    if isinstance(value, ResponsesNamedChoice):
        named = ToolChoice("required", value.name)
        return checked_tool_choice(named, tools), FunctionChoice(value.name)
    return checked_tool_choice(ToolChoice(value), tools), value
