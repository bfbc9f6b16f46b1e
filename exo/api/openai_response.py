"""What the OpenAI chat, completion and model routes send, as typed models.

The encoders build these and `/openapi.json` takes their response schemas from them, as
it takes request schemas from the request models, so the document cannot drift from what
is sent. A field that is `UNSET` is left out of the JSON (OpenAI leaves out `usage` in
stream chunks unless asked for it); one that is `None` is sent as null. Tests check what
is sent against OpenAI's published schemas (tests/api/test_published_schemas.py).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

from exo.engine.protocol import Finished

ChatFinish = Literal["stop", "length", "tool_calls"]
TextFinish = Literal["stop", "length"]
# Logprobs are built by `logprobs.py` in OpenAI's shapes (chat and legacy differ).
Logprobs = dict[str, Any]


def finish_of(finished: Finished) -> TextFinish:
    """OpenAI's name for how a generation ended (a cancelled one never gets this far)."""
    return "length" if finished.finish_reason == "length" else "stop"


class CachedTokens(Struct, frozen=True):
    cached_tokens: int


class Usage(Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: CachedTokens

    @classmethod
    def of(cls, finished: Finished) -> Usage:
        prompt, completion = finished.prompt_tokens, finished.completion_tokens
        return cls(prompt, completion, prompt + completion, CachedTokens(finished.cached_tokens))


class FunctionCall(Struct, frozen=True):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(Struct, frozen=True):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ToolCallDelta(Struct, frozen=True):
    """A whole call as one streamed `tool_calls` entry."""

    index: int
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(Struct, frozen=True):
    role: Literal["assistant"]
    content: str | None
    # Required by OpenAI's schema; this engine never refuses on its own.
    refusal: None
    tool_calls: list[ToolCall] | UnsetType = UNSET


class ChatChoice(Struct, frozen=True):
    index: int
    message: AssistantMessage
    logprobs: Logprobs | None
    finish_reason: ChatFinish


class ChatCompletion(Struct, frozen=True):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(Struct, frozen=True):
    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


class ChunkChoice(Struct, frozen=True):
    index: int
    delta: ChatDelta
    logprobs: Logprobs | None
    finish_reason: ChatFinish | None


class ChatCompletionChunk(Struct, frozen=True):
    """One streamed piece; the last, with `include_usage`, has no choices and the usage
    (the others then carry `usage: null`)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | UnsetType | None = UNSET


class TextChoice(Struct, frozen=True):
    text: str
    index: int
    logprobs: Logprobs | None
    finish_reason: TextFinish | None


class TextCompletion(Struct, frozen=True):
    """A legacy completion, whole (with usage) or one streamed piece of it."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | UnsetType = UNSET


class Model(Struct, frozen=True):
    """A model as OpenAI lists it; `name` and `context_length` are exo's additions (an
    alias not read from the hub yet has no context length)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    name: str | UnsetType = UNSET
    context_length: int | UnsetType = UNSET


class ModelList(Struct, frozen=True):
    object: Literal["list"]
    data: list[Model]


class OpenAIErrorDetail(Struct, frozen=True):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(Struct, frozen=True):
    """Every failure outside the Anthropic and Ollama routes (`errors.py`)."""

    error: OpenAIErrorDetail


RESPONSE_MODELS: tuple[type, ...] = (
    ChatCompletion,
    ChatCompletionChunk,
    TextCompletion,
    Model,
    ModelList,
)


def plain(value: Struct) -> Any:
    """The JSON-ready value of a response model (UNSET fields left out)."""
    return msgspec.to_builtins(value)
