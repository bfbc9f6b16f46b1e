"""The schemas `/openapi.json` holds, for `exo.api.openapi`: those of the typed models
(every request body, response and error: what the routes check and the encoders build,
listed here once), and the few no model gives: parameters and the stream wrappers that
carry a model per event or line.
"""

from __future__ import annotations

from typing import Any

from exo.api.admin_response import (
    DeletedInstance,
    DownloadEntry,
    Downloads,
    Health,
    Instances,
    InstanceView,
    ModelView,
    ModelViews,
    PlacementPreview,
    StateView,
)
from exo.api.anthropic_request import AnthropicMessagesRequest, AnthropicTokenCountRequest
from exo.api.anthropic_response import (
    AnthropicError,
    AnthropicMessage,
    AnthropicStreamEvent,
    AnthropicTokenCount,
)
from exo.api.downloads import DownloadTarget
from exo.api.instances import PlaceRequest
from exo.api.models import LocalModel
from exo.api.ollama_request import OllamaChatRequest, OllamaGenerateRequest, OllamaShowRequest
from exo.api.ollama_response import (
    OllamaChatReply,
    OllamaError,
    OllamaGenerateReply,
    OllamaModels,
    OllamaRunningModels,
    OllamaShowReply,
    OllamaVersion,
)
from exo.api.openai_request import ChatCompletionRequest, CompletionRequest
from exo.api.openai_response import RESPONSE_MODELS, OpenAIError
from exo.api.responses_request import ResponseRequest
from exo.api.responses_response import Response, ResponseStreamEvent
from exo.api.typed_body import body_schemas
from exo.models.cards import BUNDLED_MODEL

Schema = dict[str, Any]

# Request bodies declared as typed models (`typed_body.py`): their schemas come from them.
TYPED_BODIES = (
    OllamaChatRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
    AnthropicMessagesRequest,
    AnthropicTokenCountRequest,
    ResponseRequest,
    ChatCompletionRequest,
    CompletionRequest,
    PlaceRequest,
    DownloadTarget,
    LocalModel,
)
# Each dialect's errors.
ERROR_SHAPES = {"OpenAI": OpenAIError, "Anthropic": AnthropicError, "Ollama": OllamaError}
# Responses declared as typed models, unions of them (a stream's events) included.
TYPED_RESPONSES: tuple[Any, ...] = (
    *RESPONSE_MODELS,
    AnthropicMessage,
    AnthropicStreamEvent,
    Response,
    ResponseStreamEvent,
    OllamaChatReply,
    OllamaGenerateReply,
    OllamaModels,
    OllamaRunningModels,
    OllamaShowReply,
    OllamaVersion,
    *ERROR_SHAPES.values(),
    AnthropicTokenCount,
    Health,
    StateView,
    Instances,
    InstanceView,
    DeletedInstance,
    Downloads,
    DownloadEntry,
    list[PlacementPreview],
    ModelViews,
    ModelView,
)
TYPED, TYPED_COMPONENTS = body_schemas((*TYPED_BODIES, *TYPED_RESPONSES))


# ---------------------------------------------------------------------------------------------
# Parameters


def integer(minimum: int, maximum: int) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def enum(*values: Any) -> Schema:
    return {"enum": list(values)}


STRING: Schema = {"type": "string"}
ANY_OBJECT: Schema = {"type": "object"}
NON_EMPTY: Schema = {"type": "string", "minLength": 1}
MODEL_ID = {
    **NON_EMPTY,
    "description": "A model id from GET /v1/models.",
    "examples": [BUNDLED_MODEL],
}

# ---------------------------------------------------------------------------------------------
# Streams


def json_text(schema: Schema) -> Schema:
    """A string holding JSON that `schema` accepts."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def sse_event(data: Schema, description: str, *, named: bool = False) -> Schema:
    """One server-sent event, as an OpenAPI 3.1 `text/event-stream` schema describes each:
    its `data` (a JSON text) and, with `named`, its `event` name."""
    fields = {"event": STRING, "data": json_text(data)} if named else {"data": data}
    return {
        "type": "object",
        "properties": fields,
        "required": list(fields),
        "description": description,
    }


def openai_stream(chunk: type) -> Schema:
    """`chunk`s, or an error in OpenAI's shape, then `[DONE]`."""
    data = {
        "anyOf": [{"const": "[DONE]"}, json_text({"anyOf": [TYPED[chunk], TYPED[OpenAIError]]})]
    }
    return sse_event(data, "With `stream`: one JSON chunk an event, then `data: [DONE]`.")


def responses_stream() -> Schema:
    """Named events (the typed union of `responses_response.py`, the error event
    included), the last `response.completed`, `response.incomplete` or `response.failed`."""
    return sse_event(
        TYPED[ResponseStreamEvent],
        "With `stream`: typed events, `event:` naming the `type` of `data`, each with a "
        "rising `sequence_number`; a function call's item streams "
        "`response.function_call_arguments.delta` and `.done`.",
        named=True,
    )


def anthropic_stream() -> Schema:
    """Named events (the typed union of `anthropic_response.py`), or an `error` event."""
    return sse_event(
        {"anyOf": [TYPED[AnthropicStreamEvent], TYPED[AnthropicError]]},
        "With `stream`: message_start, then content blocks (content_block_start, "
        "content_block_delta, ..., content_block_stop; text blocks with text_delta, tool_use "
        "blocks with one input_json_delta), a ping after the first start, message_delta, "
        "message_stop; or an `error` event in the error shape.",
        named=True,
    )


def ollama_stream(reply: type) -> Schema:
    """The NDJSON lines (each a `reply`, or an error), read as one JSON array (as OpenAPI
    3.2's `schema` of a sequential media type covers the whole stream)."""
    return {
        "type": "array",
        "items": {"anyOf": [TYPED[reply], TYPED[OllamaError]]},
        "minItems": 1,
        "description": "Unless `stream` is false: one JSON object a line, the last with "
        "`done: true` (or an error).",
    }
