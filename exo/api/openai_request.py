"""OpenAI's chat and text completion request bodies as typed models (`typed_body.py`), and
what a checked chat body becomes for the backend.

Ranges follow OpenAI's documentation; `top_k`, `min_p` and `repetition_penalty` are the
extensions vLLM and llama.cpp accept, so clients written for those work too, as is vLLM's
`ignore_eos`, which benchmarks (`exo bench`) need to generate exactly `max_tokens`. Unknown
fields are ignored; what exo cannot honour is refused by name.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec
from attrs import evolve, frozen
from msgspec import Meta

from exo.api.backend import InvalidRequest
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
from exo.api.validation import INT64_MAX, INT64_MIN, MAX_STOP_SEQUENCES
from exo.engine.protocol import ChatMessage, SamplingParams, Tool, ToolCall

# Roles a client may send; `developer` is OpenAI's newer name for `system`.
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
NO_TOOLS = ToolChoice("none")
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_TOP_LOGPROBS = 20
# The legacy endpoint's `logprobs` is an int: how many alternatives per token, at most 5.
MAX_LEGACY_LOGPROBS = 5
# The schema `json_object` stands for: any JSON object.
ANY_JSON_OBJECT = {"type": "object"}
NO_PARAMETERS = {"type": "object", "properties": {}}
# Advice added to an error at these fields (`typed_body.convert_body`).
HINTS = {
    "model": "see GET /v1/models",
    "messages[].content[].type": "only text content is supported",
    "n": "only n=1 is supported",
    "tools[].type": "only function tools are supported",
    "logit_bias": f"up to {MAX_LOGIT_BIAS_ENTRIES} token ids, each to a bias in [-100, 100]",
    "prompt": "a string, or a list of one string: token-id prompts and batches are not supported",
    "best_of": "only best_of=1 is supported",
}

Stop = NonEmpty | Annotated[list[NonEmpty], Meta(max_length=MAX_STOP_SEQUENCES)]
TokenId = Annotated[str, Meta(pattern="^[0-9]{1,9}$")]
Bias = Annotated[float, Meta(ge=-100, le=100)]


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None


class _Sampling(msgspec.Struct, kw_only=True):
    """The fields OpenAI's chat and completion bodies share; null is the same as absent."""

    model: ModelName
    temperature: Annotated[float, Meta(ge=0, le=2, description="Default 1.")] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1, description="Default 1.")] | None = None
    min_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0, le=10)] | None = None
    top_k: Annotated[int, Meta(ge=-1, description="0 or -1: off.")] | None = None
    seed: Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)] | None = None
    n: Annotated[int, Meta(ge=1, le=1, description="Only 1.")] | None = None
    stop: Stop | None = None
    logit_bias: Annotated[dict[TokenId, Bias], Meta(max_length=MAX_LOGIT_BIAS_ENTRIES)] | None = (
        None
    )
    ignore_eos: bool | None = None
    stream: bool | None = None
    stream_options: (
        Annotated[StreamOptions, Meta(description="Only with `stream` true.")] | None
    ) = None

    def __post_init__(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise ValueError("`stream_options`: must be left out unless 'stream' is true")

    def sampling(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        repetition = self.repetition_penalty
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=tuple(stop),
            seed=self.seed,
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=None if repetition in (None, 1.0) else repetition,
            logit_bias=tuple(sorted((int(k), v) for k, v in (self.logit_bias or {}).items())),
            ignore_eos=bool(self.ignore_eos),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class CalledFunction(msgspec.Struct):
    name: str
    arguments: Annotated[str, Meta(description="JSON text.")]


class AssistantToolCall(msgspec.Struct, kw_only=True):
    """An assistant's earlier call, sent back in a later turn."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessageIn(msgspec.Struct, kw_only=True):
    """`content` may be null or absent only on an assistant message."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Meta(min_length=1)] | None = None
    tool_calls: (
        Annotated[list[AssistantToolCall], Meta(description="An assistant's; others ignored.")]
        | None
    ) = None
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.content is None and self.role != "assistant":
            raise ValueError("`content`: must be a string or a non-empty list of text parts")


class FunctionSpec(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str = ""
    parameters: Annotated[dict[str, Any], Meta(description="A JSON schema.")] | None = None


class ChatTool(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormatText(msgspec.Struct, tag="text", tag_field="type"):
    pass


class ResponseFormatJsonObject(msgspec.Struct, tag="json_object", tag_field="type"):
    pass


class JsonSchemaSpec(msgspec.Struct, kw_only=True):
    name: str | None = None
    schema: dict[str, Any] = msgspec.field(default_factory=lambda: dict(ANY_JSON_OBJECT))
    strict: bool | None = None
    description: str | None = None


class ResponseFormatJsonSchema(msgspec.Struct, tag="json_schema", tag_field="type"):
    json_schema: JsonSchemaSpec


ResponseFormat = ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema
Tools = Annotated[list[ChatTool], Meta(max_length=MAX_TOOLS)]


class ChatCompletionRequest(_Sampling, kw_only=True):
    """A `POST /v1/chat/completions` body."""

    messages: Annotated[list[ChatMessageIn], Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1, le=INT64_MAX)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1, le=INT64_MAX)] | None = None
    tools: Tools | None = None
    tool_choice: (
        Annotated[
            Literal["none", "auto", "required"] | NamedToolChoice,
            Meta(
                description="Anything but `none` needs `tools`, a named function among them; "
                "a forced call cannot be combined with a JSON `response_format`."
            ),
        ]
        | None
    ) = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: (
        Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS, description="Needs `logprobs`.")] | None
    ) = None
    functions: Annotated[Any, Meta(description="Legacy: refused; use `tools`.")] = None
    function_call: Annotated[Any, Meta(description="Legacy: refused; use `tool_choice`.")] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.functions or self.function_call:
            raise ValueError(
                "`functions`: The legacy 'functions' and 'function_call' are not supported; "
                "use 'tools'."
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("`top_logprobs`: needs 'logprobs' set to true")
        refuse_duplicate_tools(self.tools)


def refuse_duplicate_tools(tools: list[ChatTool] | None) -> None:
    """Raise (in a model's `__post_init__`) when two tools share a name."""
    refuse_duplicate_names([t.function.name for t in tools or ()], "tools[{i}].function.name")


@frozen
class ChatRequest:
    """A checked `POST /v1/chat/completions` body, as the backend takes it."""

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


def parse_chat_request(body: object) -> ChatRequest:
    """A checked chat-completions body; raises InvalidRequest naming the field."""
    chat = convert_body(body, ChatCompletionRequest, HINTS)
    tools = function_tools(chat.tools)
    tool_choice = chat_tool_choice(chat.tool_choice, tools)
    json_schema = response_format_schema(chat.response_format)
    if tool_choice.forced:
        if json_schema is not None:
            raise InvalidRequest(
                "A forced 'tool_choice' and a JSON 'response_format' cannot both constrain "
                "the reply.",
                "tool_choice",
            )
        json_schema = forced_call_schema(tools, tool_choice)
    max_tokens = chat.max_completion_tokens
    params = evolve(
        chat.sampling(),
        max_tokens=max_tokens if max_tokens is not None else chat.max_tokens,
        logprobs=(chat.top_logprobs or 0) if chat.logprobs else None,
        json_schema=json_schema,
    )
    return ChatRequest(
        model=chat.model,
        messages=tuple(chat_message(m) for m in chat.messages),
        params=params,
        stream=bool(chat.stream),
        include_usage=chat.include_usage,
        tools=tools,
        tool_choice=tool_choice,
    )


def chat_message(message: ChatMessageIn) -> ChatMessage:
    calls: tuple[ToolCall, ...] = ()
    if message.role == "assistant" and message.tool_calls:
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls
        )
    return ChatMessage(
        ROLES[message.role], joined_text(message.content), calls, message.tool_call_id
    )


def function_tools(tools: list[ChatTool] | None) -> tuple[Tool, ...]:
    """OpenAI's function tools as the engine takes them (their schema as JSON text)."""
    return tuple(
        engine_tool(t.function.name, t.function.description, t.function.parameters)
        for t in tools or ()
    )


def engine_tool(name: str, description: str | None, parameters: dict[str, Any] | None) -> Tool:
    """A function tool as the engine takes it: its schema as JSON text, an object taking
    nothing when it has none."""
    schema = NO_PARAMETERS if parameters is None else parameters
    return Tool(name, description or "", json.dumps(schema))


def chat_tool_choice(value: str | NamedToolChoice | None, tools: tuple[Tool, ...]) -> ToolChoice:
    if isinstance(value, NamedToolChoice):
        return checked_tool_choice(ToolChoice("required", value.function.name), tools)
    return checked_tool_choice(None if value is None else ToolChoice(value), tools)


def response_format_schema(value: ResponseFormat | None) -> str | None:
    """The JSON schema (as JSON text) a `response_format` constrains the reply to, or None
    for free text."""
    match value:
        case ResponseFormatJsonObject():
            return json.dumps(ANY_JSON_OBJECT)
        case ResponseFormatJsonSchema(json_schema=spec):
            return json.dumps(spec.schema)
        case _:
            return None


class CompletionRequest(_Sampling, kw_only=True):
    """A `POST /v1/completions` body: a raw prompt, no chat template."""

    prompt: NonEmpty | Annotated[list[NonEmpty], Meta(min_length=1, max_length=1)]
    max_tokens: (
        Annotated[int, Meta(ge=0, le=INT64_MAX, description="Default 16; 0 counts the prompt.")]
        | None
    ) = None
    logprobs: Annotated[int, Meta(ge=0, le=MAX_LEGACY_LOGPROBS)] | None = None
    echo: Annotated[bool, Meta(description="Only false.", extra_json_schema={"const": False})] = (
        False
    )
    suffix: (
        Annotated[
            str,
            Meta(description="Fill in the middle: refused.", extra_json_schema={"maxLength": 0}),
        ]
        | None
    ) = None
    best_of: Annotated[int, Meta(ge=1, le=1, description="Only 1.")] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.echo:
            raise ValueError("`echo`: is not supported")
        if self.suffix:
            raise ValueError("`suffix`: (fill in the middle) is not supported")

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
