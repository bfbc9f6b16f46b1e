"""Anthropic Messages request bodies: typed models (`typed_body.py`) for `/v1/messages`
and `/v1/messages/count_tokens`, and what a checked body becomes for the backend.

Text and custom tools are read; image and document blocks, server tools, extended
thinking and structured output are refused rather than ignored; unknown fields are
ignored. `exo.api.anthropic` answers a refusal in Anthropic's error shape.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec
from attrs import frozen
from msgspec import Meta

from exo.api.tool_calls import (
    MAX_TOOLS,
    ToolChoice,
    checked_tool_choice,
    forced_call_schema,
    offered,
)
from exo.api.typed_body import (
    CONTENT_PART_SEPARATOR,
    ModelName,
    NonEmpty,
    convert_body,
    joined_text,
    refuse_duplicate_names,
)
from exo.api.validation import INT64_MAX
from exo.engine.protocol import ChatMessage, SamplingParams, Tool, ToolCall

MESSAGES_PATH = "/v1/messages"
# Anthropic documents no cap; OpenAI's is 4. Each one costs the engine a suffix check per
# token, so keep it small but generous.
MAX_STOP_SEQUENCES = 16
NO_TOOLS = ToolChoice("none")
# Advice added to an error at these fields (`typed_body.convert_body`).
HINTS = {
    "messages[].role": "a system prompt goes in the top-level 'system'",
    "messages[].content[].type": "images, documents and thinking blocks are not supported",
    "messages[].content[].content[].type": "only text blocks are supported here",
    "system[].type": "only text blocks are supported here",
    "tools[].type": "server and Anthropic-defined tools (web search, bash, text editor, ...) "
    "are not supported; define a custom tool with 'name' and 'input_schema'",
    "thinking.type": "extended thinking is not supported; omit 'thinking' or send {\"type\": "
    '"disabled"}',
    "output_config.format": f"structured output is not supported on {MESSAGES_PATH} yet",
}

ToolName = Annotated[str, Meta(min_length=1, max_length=64)]


class AnthropicText(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class AnthropicToolUse(msgspec.Struct, tag="tool_use", tag_field="type"):
    """An assistant's earlier call, sent back so that the model sees what it asked for."""

    id: NonEmpty
    name: NonEmpty
    input: dict[str, Any]


class AnthropicToolResult(msgspec.Struct, tag="tool_result", tag_field="type", kw_only=True):
    """The result of call `tool_use_id`, in a user turn."""

    tool_use_id: NonEmpty
    content: str | list[AnthropicText] | None = None
    is_error: bool | None = None


Block = AnthropicText | AnthropicToolUse | AnthropicToolResult


class AnthropicTurn(msgspec.Struct):
    """One turn: text, an assistant's tool_use blocks or a user's tool_result blocks."""

    role: Literal["user", "assistant"]
    content: str | list[Block]

    def __post_init__(self) -> None:
        if isinstance(self.content, str):
            return
        wrong = AnthropicToolResult if self.role == "assistant" else AnthropicToolUse
        if any(isinstance(block, wrong) for block in self.content):
            raise ValueError(
                "`content`: A user turn holds text and tool_result blocks, not tool_use "
                "(only an assistant makes calls)."
                if self.role == "user"
                else "`content`: An assistant turn holds text and tool_use blocks, not "
                "tool_result (results come in the user's turn)."
            )


class AnthropicTool(msgspec.Struct, kw_only=True):
    """A custom tool. Anthropic's own tools run on Anthropic's side or need its tool
    definitions: refused rather than offered as empty functions."""

    type: Literal["custom"] | None = None
    name: ToolName
    description: str = ""
    input_schema: Annotated[dict[str, Any], Meta(description='A JSON schema, "type": "object".')]
    cache_control: Any = None

    def __post_init__(self) -> None:
        if self.input_schema.get("type") != "object":
            raise ValueError('`input_schema`: must be a JSON schema with "type": "object"')


class _Choice(msgspec.Struct, tag_field="type", kw_only=True):
    disable_parallel_tool_use: bool | None = None


class AnthropicChoiceAuto(_Choice, tag="auto"):
    pass


class AnthropicChoiceAny(_Choice, tag="any"):
    """A call is required."""


class AnthropicChoiceNone(_Choice, tag="none"):
    pass


class AnthropicChoiceTool(_Choice, tag="tool", kw_only=True):
    """A call of this tool is required."""

    name: str


class AnthropicThinkingDisabled(msgspec.Struct, tag="disabled", tag_field="type"):
    pass


class AnthropicOutputConfig(msgspec.Struct, kw_only=True):
    format: Annotated[None, Meta(description="Structured output is not supported.")] = None


class AnthropicTokenCountRequest(msgspec.Struct, kw_only=True):
    """A `/v1/messages/count_tokens` body: the start of a messages body."""

    model: ModelName
    messages: Annotated[
        list[AnthropicTurn],
        Meta(
            min_length=1,
            description="Ends with a user turn (a final assistant turn, prefill, is refused). "
            "A user turn's tool results go to the model ahead of its text.",
        ),
    ]
    system: str | list[AnthropicText] | None = None
    tools: Annotated[list[AnthropicTool], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: (
        AnthropicChoiceAuto | AnthropicChoiceAny | AnthropicChoiceNone | AnthropicChoiceTool | None
    ) = None
    thinking: AnthropicThinkingDisabled | None = None
    output_config: AnthropicOutputConfig | None = None

    def __post_init__(self) -> None:
        refuse_duplicate_names([tool.name for tool in self.tools or ()], "tools[{i}].name")
        if self.messages[-1].role == "assistant":
            # Anthropic continues a final assistant turn; exo's chat templates cannot yet.
            raise ValueError(
                f"`messages[{len(self.messages) - 1}]`: A final assistant message (prefill) "
                "is not supported yet; end with a user message."
            )


class AnthropicMessagesRequest(AnthropicTokenCountRequest, kw_only=True):
    """A `/v1/messages` body."""

    max_tokens: Annotated[int, Meta(ge=1, le=INT64_MAX)]
    temperature: Annotated[float, Meta(ge=0, le=1, description="Default 1.")] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1, description="Default 1.")] | None = None
    top_k: Annotated[int, Meta(ge=0, description="0: off.")] = 0
    stop_sequences: Annotated[list[NonEmpty], Meta(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: bool = False
    metadata: Annotated[Any, Meta(description="Accepted and ignored.")] = None


@frozen
class Prompt:
    """What a messages or count_tokens body asks about: the chat (system prompt first) and
    the tools the model may call."""

    model: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = NO_TOOLS

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        return offered(self.tools, self.tool_choice)


@frozen
class MessagesRequest:
    """A checked `POST /v1/messages` body."""

    prompt: Prompt
    params: SamplingParams
    stream: bool = False


def parse_prompt(body: object) -> Prompt:
    """The model, chat and tools of a count_tokens body."""
    return _prompt(convert_body(body, AnthropicTokenCountRequest, HINTS))


def parse_messages_request(body: object) -> MessagesRequest:
    """A checked `/v1/messages` body; raises InvalidRequest naming the field."""
    asked = convert_body(body, AnthropicMessagesRequest, HINTS)
    prompt = _prompt(asked)
    params = SamplingParams(
        temperature=1.0 if asked.temperature is None else asked.temperature,
        top_p=1.0 if asked.top_p is None else asked.top_p,
        max_tokens=asked.max_tokens,
        stop=tuple(asked.stop_sequences or ()),
        top_k=asked.top_k,
        # A forced call is not left to the model's habits: decoding is constrained to it.
        json_schema=(
            forced_call_schema(prompt.tools, prompt.tool_choice)
            if prompt.tool_choice.forced
            else None
        ),
    )
    return MessagesRequest(prompt=prompt, params=params, stream=asked.stream)


def _prompt(asked: AnthropicTokenCountRequest) -> Prompt:
    system = joined_text(asked.system)
    turns = [message for turn in asked.messages for message in _turn(turn)]
    tools = tuple(
        Tool(t.name, t.description, json.dumps(t.input_schema)) for t in asked.tools or ()
    )
    return Prompt(
        model=asked.model,
        messages=((ChatMessage("system", system),) if system else ()) + tuple(turns),
        tools=tools,
        tool_choice=_tool_choice(asked.tool_choice, tools),
    )


def _turn(turn: AnthropicTurn) -> list[ChatMessage]:
    """One turn's messages. A user turn's tool results become `tool` messages, ahead of
    its text (as Anthropic requires them first); an assistant's tool_use blocks, its calls.
    Chat templates have no error flag, so an `is_error` result says so in its text."""
    if isinstance(turn.content, str):
        return [ChatMessage(turn.role, turn.content)]
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[ChatMessage] = []
    for block in turn.content:
        match block:
            case AnthropicText(text=text):
                texts.append(text)
            case AnthropicToolUse(id=call_id, name=name, input=arguments):
                calls.append(ToolCall(call_id, name, json.dumps(arguments, ensure_ascii=False)))
            case AnthropicToolResult(tool_use_id=call_id, content=content, is_error=is_error):
                text = joined_text(content)
                said = f"Error: {text}" if is_error else text
                results.append(ChatMessage("tool", said, tool_call_id=call_id))
    if texts or calls or not results:
        text = CONTENT_PART_SEPARATOR.join(texts)
        results.append(ChatMessage(turn.role, text, tool_calls=tuple(calls)))
    return results


def _tool_choice(
    choice: AnthropicChoiceAuto
    | AnthropicChoiceAny
    | AnthropicChoiceNone
    | AnthropicChoiceTool
    | None,
    tools: tuple[Tool, ...],
) -> ToolChoice:
    """Anthropic's choice as the OpenAI mode, checked against `tools`."""
    match choice:
        case None:
            return checked_tool_choice(None, tools)
        case AnthropicChoiceTool(name=name):
            return checked_tool_choice(ToolChoice("required", name), tools)
        case AnthropicChoiceAny():
            return checked_tool_choice(ToolChoice("required"), tools)
        case AnthropicChoiceNone():
            return checked_tool_choice(ToolChoice("none"), tools)
        case AnthropicChoiceAuto():
            # Accepted without tools, as it was before tools were: nothing to call.
            return checked_tool_choice(ToolChoice("auto") if tools else None, tools)
