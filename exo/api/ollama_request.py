"""The Ollama dialect's request bodies: typed models (`typed_body.py`) for `/api/chat`,
`/api/generate` and `/api/show`, and what a checked body becomes for the backend.

Ollama streams unless told `"stream": false` and takes sampling settings in `options`
(`num_predict` is its `max_tokens`), with its own defaults; options it knows but exo does
not apply (num_ctx, num_thread, ...) are accepted and ignored, as are unknown fields.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec
from attrs import frozen
from msgspec import Meta

from exo.api.openai_request import (
    ANY_JSON_OBJECT,
    Tools,
    function_tools,
    refuse_duplicate_tools,
)
from exo.api.typed_body import ModelName, convert_body
from exo.engine.protocol import ChatMessage, SamplingParams, Tool, ToolCall

# Ollama's sampling defaults, so a client that sends no options samples as Ollama would.
DEFAULT_TEMPERATURE, DEFAULT_TOP_P, DEFAULT_TOP_K = 0.8, 0.9, 40
NOT_SUPPORTED = "is not supported by exo yet"


Temperature = Annotated[float, Meta(ge=0, le=100, description=f"Default {DEFAULT_TEMPERATURE}.")]
TopP = Annotated[float, Meta(ge=0, le=1, description=f"Default {DEFAULT_TOP_P}.")]
TopK = Annotated[int, Meta(ge=0, description=f"Default {DEFAULT_TOP_K}.")]
Fraction = Annotated[float, Meta(ge=0, le=1)]
RepeatPenalty = Annotated[float, Meta(ge=0, le=10)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
NumPredict = Annotated[
    int,
    Meta(
        description="The most tokens to generate; -1, -2: up to the context.",
        extra_json_schema={"not": {"const": 0}},
    ),
]
# Refused unless empty; the schema says so, `__post_init__` says it in words.
Images = Annotated[
    list[str],
    Meta(description="Images: not supported by exo yet.", extra_json_schema={"maxItems": 0}),
]
Suffix = Annotated[
    str,
    Meta(description=f"Fill in the middle {NOT_SUPPORTED}.", extra_json_schema={"maxLength": 0}),
]


class OllamaOptions(msgspec.Struct, kw_only=True):
    """Sampling options; null is the same as absent. Other Ollama options (num_ctx, ...)
    are accepted and ignored."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: Fraction | None = None
    repeat_penalty: RepeatPenalty | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    num_predict: NumPredict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.num_predict == 0:
            raise ValueError("`num_predict`: must be a non-zero integer")


class OllamaFunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: Annotated[dict[str, Any] | str, Meta(description="An object, or JSON text.")] = (
        msgspec.field(default_factory=dict)
    )


class OllamaToolCall(msgspec.Struct, kw_only=True):
    function: OllamaFunctionCall


class OllamaMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: (
        Annotated[
            list[OllamaToolCall], Meta(description="An assistant's calls; ignored on other roles.")
        ]
        | None
    ) = None
    tool_call_id: str | None = None
    # Ollama names the tool a result comes from; the chat template needs no more.
    tool_name: str | None = None
    images: Images | None = None

    def __post_init__(self) -> None:
        if self.images:
            raise ValueError(f"`images`: {NOT_SUPPORTED}")


class _OllamaGeneration(msgspec.Struct, kw_only=True):
    model: Annotated[ModelName, Meta(description="A model id; `:latest` is accepted.")]
    stream: Annotated[bool, Meta(description="Default true: NDJSON lines.")] = True
    options: OllamaOptions | None = None
    format: (
        Annotated[
            Literal["", "json"] | dict[str, Any],
            Meta(description='"json" (any JSON object) or a JSON schema the reply must match.'),
        ]
        | None
    ) = None
    images: Images | None = None
    suffix: Suffix | None = None

    def __post_init__(self) -> None:
        for name in ("images", "suffix"):
            if getattr(self, name):
                raise ValueError(f"`{name}`: {NOT_SUPPORTED}")


class OllamaChatRequest(_OllamaGeneration, kw_only=True):
    """An `/api/chat` body."""

    messages: Annotated[list[OllamaMessage], Meta(min_length=1)]
    tools: Tools | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_duplicate_tools(self.tools)


class OllamaGenerateRequest(_OllamaGeneration, kw_only=True):
    """An `/api/generate` body: the system prompt and the prompt as a chat, or with `raw`
    the prompt as it is."""

    prompt: Annotated[str, Meta(description="Empty, with no system: only load the model.")] = ""
    system: str | None = None
    raw: Annotated[bool, Meta(description="The prompt without the chat template.")] = False


class OllamaShowRequest(msgspec.Struct, kw_only=True):
    """An `/api/show` body: the model, as `model` or (older clients) `name`."""

    model: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not (self.model or self.name):
            raise ValueError("`model`: is required")


@frozen
class OllamaRequest:
    """A checked `/api/chat` or `/api/generate` body, as the backend takes it."""

    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    stream: bool
    tools: tuple[Tool, ...] = ()
    text: str | None = None  # a `raw` generate prompt: no chat template


def parse_chat(body: object) -> OllamaRequest:
    chat = convert_body(body, OllamaChatRequest)
    tools = function_tools(chat.tools)
    messages = tuple(_chat_message(i, m) for i, m in enumerate(chat.messages))
    return OllamaRequest(chat.model, messages, _sampling(chat), chat.stream, tools)


def parse_generate(body: object) -> OllamaRequest:
    asked = convert_body(body, OllamaGenerateRequest)
    params = _sampling(asked)
    if asked.raw and asked.prompt:
        return OllamaRequest(asked.model, (), params, asked.stream, text=asked.prompt)
    system = (ChatMessage("system", asked.system),) if asked.system else ()
    messages = (*system, ChatMessage("user", asked.prompt))
    return OllamaRequest(asked.model, messages, params, asked.stream)


def parse_show(body: object) -> str:
    """The model an `/api/show` body names."""
    show = convert_body(body, OllamaShowRequest)
    return show.model or show.name or ""


def _chat_message(index: int, message: OllamaMessage) -> ChatMessage:
    """Ollama's tool calls carry no id and their arguments as an object: give each an id
    by position and its arguments as JSON text, as the chat template takes them."""
    calls: tuple[ToolCall, ...] = ()
    if message.role == "assistant" and message.tool_calls:
        calls = tuple(
            ToolCall(f"call_{index}_{j}", call.function.name, _arguments(call.function))
            for j, call in enumerate(message.tool_calls)
        )
    return ChatMessage(message.role, message.content, calls, message.tool_call_id)


def _arguments(function: OllamaFunctionCall) -> str:
    arguments = function.arguments
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _sampling(asked: _OllamaGeneration) -> SamplingParams:
    options = asked.options or OllamaOptions()
    stop = [options.stop] if isinstance(options.stop, str) else options.stop or []
    num_predict, repeat = options.num_predict, options.repeat_penalty
    return SamplingParams(
        temperature=_given(options.temperature, DEFAULT_TEMPERATURE),
        top_p=_given(options.top_p, DEFAULT_TOP_P) or 1.0,
        # Ollama: -1 generates until the model stops, -2 until the context is full.
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        stop=tuple(s for s in stop if s),
        seed=options.seed,
        top_k=DEFAULT_TOP_K if options.top_k is None else options.top_k,
        min_p=options.min_p or 0.0,
        presence_penalty=options.presence_penalty or 0.0,
        frequency_penalty=options.frequency_penalty or 0.0,
        repetition_penalty=None if repeat in (None, 1.0) else repeat,
        json_schema=_json_format(asked.format),
    )


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def _json_format(value: str | dict[str, Any] | None) -> str | None:
    if value in (None, ""):
        return None
    return json.dumps(ANY_JSON_OBJECT if value == "json" else value)
