"""What the Anthropic Messages route sends, as typed models: the message (whole, or as
`message_start` opens a stream) and every stream event.

The encoders in `anthropic.py` build these, and `/openapi.json` takes their schemas, the
stream's as a union of its events tagged by `type`. Tests check what is sent against the
anthropic SDK's own types in strict mode (tests/api/test_published_schemas.py).
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

from exo.engine.protocol import Finished

StopReason = Literal["end_turn", "stop_sequence", "max_tokens", "tool_use"]


class AnthropicUsage(Struct, frozen=True):
    """Anthropic counts the prompt tokens read from the cache apart from `input_tokens`."""

    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int

    @classmethod
    def of(cls, finished: Finished | None) -> AnthropicUsage:
        if finished is None:
            return cls(0, 0, 0, 0)
        cached = finished.cached_tokens
        return cls(finished.prompt_tokens - cached, 0, cached, finished.completion_tokens)


class AnthropicTextBlock(Struct, frozen=True, tag_field="type", tag="text"):
    text: str


class AnthropicToolUseBlock(Struct, frozen=True, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = AnthropicTextBlock | AnthropicToolUseBlock


class AnthropicMessage(Struct, frozen=True, tag_field="type", tag="message"):
    """A whole reply, or (stop reason null, no content yet) as `message_start` opens a
    stream."""

    id: str
    role: Literal["assistant"]
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: AnthropicUsage


class MessageStart(Struct, frozen=True, tag_field="type", tag="message_start"):
    message: AnthropicMessage


class ContentBlockStart(Struct, frozen=True, tag_field="type", tag="content_block_start"):
    index: int
    content_block: ContentBlock


class TextDelta(Struct, frozen=True, tag_field="type", tag="text_delta"):
    text: str


class InputJsonDelta(Struct, frozen=True, tag_field="type", tag="input_json_delta"):
    partial_json: str


class ContentBlockDelta(Struct, frozen=True, tag_field="type", tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStop(Struct, frozen=True, tag_field="type", tag="content_block_stop"):
    index: int


class StopDetails(Struct, frozen=True):
    stop_reason: StopReason | None
    stop_sequence: str | None


class MessageDelta(Struct, frozen=True, tag_field="type", tag="message_delta"):
    delta: StopDetails
    usage: AnthropicUsage


class MessageStop(Struct, frozen=True, tag_field="type", tag="message_stop"):
    pass


class Ping(Struct, frozen=True, tag_field="type", tag="ping"):
    pass


class AnthropicTokenCount(Struct, frozen=True):
    """The prompt's tokens, as the model's template renders it (tools included)."""

    input_tokens: int


class AnthropicErrorDetail(Struct, frozen=True):
    type: str
    message: str


class AnthropicError(Struct, frozen=True, tag_field="type", tag="error"):
    """A failure: the whole reply, or an `error` event ending a stream."""

    error: AnthropicErrorDetail


AnthropicStreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
)
