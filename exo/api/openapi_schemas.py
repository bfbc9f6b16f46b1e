"""JSON schemas of the HTTP API's responses and errors, for `exo.api.openapi`.

Request bodies' schemas are not here: each comes from the typed model that checks it
(`typed_body.py`); nor are the OpenAI chat, completion and model responses' or the
Anthropic message's and stream events' (`openai_response.py`, `anthropic_response.py`). Response schemas give the fields a client can rely on; extra fields may
come and go. tests/api/test_published_schemas.py checks the OpenAI routes' answers
against OpenAI's own schemas as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exo.api import (
    instances,
)
from exo.models.cards import BUNDLED_MODEL

Schema = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Builders


def obj(properties: Mapping[str, Schema], *required: str, **extra: Any) -> Schema:
    """An object with these properties, `required` among them; others are allowed (and
    ignored) unless `extra` says `additionalProperties=False`."""
    schema: Schema = {"type": "object", "properties": dict(properties), **extra}
    if required:
        schema["required"] = list(required)
    return schema


def record(properties: Mapping[str, Schema], *optional: str) -> Schema:
    """An object that always has these properties, except the `optional` ones."""
    return obj(properties, *(name for name in properties if name not in optional))


_SIMPLE_KEYS = {"type", "minimum", "exclusiveMinimum", "maximum", "minLength", "maxLength"}


def nullable(schema: Schema) -> Schema:
    """`schema` or null: the validators read a null field as one not given."""
    kind = schema.get("type")
    if isinstance(kind, str) and set(schema) <= _SIMPLE_KEYS:
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def integer(minimum: int | None = None, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def string(min_length: int = 0, **extra: Any) -> Schema:
    return {"type": "string", **({"minLength": min_length} if min_length else {}), **extra}


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def enum(*values: Any) -> Schema:
    return {"enum": list(values)}


def const(value: Any) -> Schema:
    return {"const": value}


def untyped(*names: str) -> dict[str, Schema]:
    """Properties whose presence is promised, not their shape."""
    return {name: {} for name in names}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def described(schema: Schema, description: str) -> Schema:
    return {**schema, "description": description}


BOOLEAN: Schema = {"type": "boolean"}
STRING: Schema = {"type": "string"}
ANY_OBJECT: Schema = {"type": "object"}
NON_EMPTY = string(1)
COUNT = integer(0)
MODEL_ID = {
    **NON_EMPTY,
    "description": "A model id from GET /v1/models.",
    "examples": [BUNDLED_MODEL],
}

# ---------------------------------------------------------------------------------------------
# OpenAI


# ---------------------------------------------------------------------------------------------
# Anthropic


# ---------------------------------------------------------------------------------------------
# Ollama


# ---------------------------------------------------------------------------------------------
# Admin and instances


def state_view() -> Schema:
    return record(
        {
            "node_id": STRING,
            "master": nullable(STRING),
            "term": COUNT,
            "index": COUNT,
            "hash": STRING,
            "state": ANY_OBJECT,
        }
    )


def instance() -> Schema:
    return record(
        {
            "id": STRING,
            "model": STRING,
            "strategy": enum(*instances.STRATEGIES),
            "status": described(STRING, "downloading, loading, ready or failed."),
            "shards": array(obj({"node_id": STRING, "rank": COUNT}, "node_id", "rank")),
            "ring": array(STRING),
            "context_length": nullable(integer(1)),
        },
        "context_length",
    )


DOWNLOAD_PHASE = enum("pending", "downloading", "complete", "failed", "stopped")


def download_entry() -> Schema:
    """One node's download of one model, as GET /downloads lists it."""
    return record(
        {
            "node": STRING,
            "model": STRING,
            "phase": nullable(DOWNLOAD_PHASE),
            "bytes_done": COUNT,
            "bytes_total": COUNT,
            "detail": STRING,
            "rate": COUNT,
            "eta_seconds": nullable({"type": "number", "minimum": 0}),
            "order": nullable(enum("fetch", "stop")),
        },
        "bytes_done",
        "bytes_total",
        "detail",
        "rate",
    )


def model_view() -> Schema:
    """A model as GET /models shows it: card (null for an alias not read yet), per-node
    downloads, instances."""
    download = record(
        {
            "phase": DOWNLOAD_PHASE,
            "bytes_done": COUNT,
            "bytes_total": COUNT,
            "detail": STRING,
            "rate": COUNT,
        },
        "rate",
    )
    return record(
        {
            "id": STRING,
            "card": nullable(ANY_OBJECT),
            "downloads": {"type": "object", "additionalProperties": download},
            "instances": array(STRING),
            "alias_of": STRING,
        },
        "instances",
        "alias_of",
    )


def previews() -> Schema:
    names = ("strategy", "node_count", "shards", "memory_by_node", "predicted_tokens_per_second")
    return array(record({**untyped(*names), "valid": BOOLEAN, "reason": STRING}))


# ---------------------------------------------------------------------------------------------
# Streams


def json_text(schema: Schema) -> Schema:
    """A string holding JSON that `schema` accepts."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def sse_event(data: Schema, description: str, *, named: bool = False) -> Schema:
    """One server-sent event, as an OpenAPI 3.1 `text/event-stream` schema describes each:
    its `data` (a JSON text) and, with `named`, its `event` name."""
    fields = {"event": STRING, "data": json_text(data)} if named else {"data": data}
    return described(record(fields), description)


def openai_stream(chunk: Schema) -> Schema:
    """Chunks, or an error in OpenAI's shape, then `[DONE]`."""
    data = {"anyOf": [const("[DONE]"), json_text({"anyOf": [chunk, ref("OpenAIError")]})]}
    return sse_event(data, "With `stream`: one JSON chunk an event, then `data: [DONE]`.")


def responses_stream(event: Schema) -> Schema:
    """Named events (the typed union of `responses_response.py`), the last
    `response.completed`, `response.incomplete` or (after an `error`) `response.failed`."""
    return sse_event(
        event,
        "With `stream`: typed events, `event:` naming the `type` of `data`, each with a "
        "rising `sequence_number`; a function call's item streams "
        "`response.function_call_arguments.delta` and `.done`.",
        named=True,
    )


def anthropic_stream(event: Schema) -> Schema:
    """Named events (the typed union of `anthropic_response.py`), or an `error` event."""
    return sse_event(
        {"anyOf": [event, ref("AnthropicError")]},
        "With `stream`: message_start, then content blocks (content_block_start, "
        "content_block_delta, ..., content_block_stop; text blocks with text_delta, tool_use "
        "blocks with one input_json_delta), a ping after the first start, message_delta, "
        "message_stop; or an `error` event in the error shape.",
        named=True,
    )


def ollama_stream(reply: Schema) -> Schema:
    """The NDJSON lines (each a `reply`, or an error), read as one JSON array (as OpenAPI
    3.2's `schema` of a sequential media type covers the whole stream)."""
    line = {"anyOf": [reply, ref("OllamaError")]}
    return described(
        array(line, minItems=1),
        "Unless `stream` is false: one JSON object a line, the last with `done: true` (or "
        "an error).",
    )
