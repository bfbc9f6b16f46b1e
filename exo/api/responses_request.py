"""OpenAI Responses request bodies, validated into chat messages, sampling and tools.

Strict as the chat-completions dialect: every violation is an `InvalidRequest` naming the
field in `param`. Input items become chat messages (function calls and their outputs
included); fields that need stored responses are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import evolve, frozen

from exo.api.errors import (
    dumps,
)
from exo.api.openai import (
    CONTENT_PART_SEPARATOR,
    NO_TOOLS,
    ROLES,
)
from exo.api.tool_calls import (
    ToolChoice,
    forced_call_schema,
    offered,
    parse_tool_choice,
    parse_tools,
    read_tool,
)
from exo.api.validation import (
    invalid,
    is_int,
    optional_number,
    optional_positive_int,
    text_parts,
)
from exo.engine.protocol import ChatMessage, SamplingParams, Tool, ToolCall

# Input message roles (no `tool`: tool results come as function_call_output items).
INPUT_ROLES = {role: ROLES[role] for role in ("system", "developer", "user", "assistant")}
# Text parts of a message; `output_text` is how replayed assistant turns arrive.
TEXT_PARTS = ("input_text", "output_text")
# The schema that `text.format: {"type": "json_object"}` constrains the reply to.
JSON_OBJECT_SCHEMA = '{"type":"object"}'
NOT_STORED = "exo does not store responses (every response is answered as if 'store' were false)"
# OpenAI's limits on `metadata`.
METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512


@frozen
class ResponsesRequest:
    """A validated `POST /v1/responses` body; `echo` holds the fields the response repeats."""

    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    stream: bool
    echo: Mapping[str, Any]
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = NO_TOOLS

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        return offered(self.tools, self.tool_choice)


# ---------------------------------------------------------------------------------------------
# Validation


def _parse_content(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise invalid(f"'{where}' must be a string or a non-empty list of text parts.", where)
    texts = text_parts(value, where, TEXT_PARTS, "only text input is supported")
    return CONTENT_PART_SEPARATOR.join(texts)


def _string(
    item: Mapping[str, Any], name: str, where: str, what: str = "a non-empty string"
) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"'{where}.{name}' must be {what}.", f"{where}.{name}")
    return value


def _parse_message(item: Mapping[str, Any], where: str) -> ChatMessage:
    role = item.get("role")
    if not isinstance(role, str) or role not in INPUT_ROLES:
        raise invalid(
            f"'{where}.role' must be one of {', '.join(sorted(INPUT_ROLES))}; got {role!r}.",
            f"{where}.role",
        )
    content = _parse_content(item.get("content"), f"{where}.content")
    return ChatMessage(role=INPUT_ROLES[role], content=content)


def parse_input(value: object) -> tuple[ChatMessage, ...]:
    """`input` as chat messages: a string is one user turn; items are text messages, the
    function calls of earlier turns and their outputs (as `tool` messages).

    Calls join the assistant turn right before them (its text, or the calls before), as
    chat templates render one assistant turn's text and calls together.
    """
    if isinstance(value, str):
        return (ChatMessage("user", value),)
    if not isinstance(value, list) or not value:
        raise invalid("'input' must be a string or a non-empty list of input items.", "input")
    messages: list[ChatMessage] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object: a message or a function call item.", where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_parse_message(item, where))
        elif kind == "function_call":
            arguments = _string(item, "arguments", where, "the arguments as JSON text")
            call = ToolCall(
                _string(item, "call_id", where), _string(item, "name", where), arguments
            )
            if messages and messages[-1].role == "assistant":
                messages[-1] = evolve(messages[-1], tool_calls=(*messages[-1].tool_calls, call))
            else:
                messages.append(ChatMessage("assistant", "", tool_calls=(call,)))
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            output = _parse_content(item.get("output"), f"{where}.output")
            messages.append(ChatMessage("tool", output, tool_call_id=call_id))
        else:
            raise invalid(
                f"'{where}' is a {kind!r} item; only message, function_call and "
                "function_call_output items are supported on /v1/responses.",
                f"{where}.type",
            )
    return tuple(messages)


def _read_function_tool(item: object, where: str, earlier: Sequence[Tool]) -> Tool:
    """A flat `{"type": "function", "name", "description"?, "parameters"?, "strict"?}`.

    exo runs none of OpenAI's built-in tools, so any other type is refused by name; a null
    field is one not given, as OpenAI's client sends them.
    """
    kind = item.get("type") if isinstance(item, dict) else None
    if not isinstance(item, dict) or kind != "function":
        raise invalid(
            f'\'{where}\' must be a function tool {{"type": "function", "name", ...}}; got '
            f"type {kind!r}: exo runs no built-in tools (web_search, file_search, "
            "code_interpreter, computer_use, mcp, ...).",
            f"{where}.type",
        )
    if item.get("strict") is not None and not isinstance(item["strict"], bool):
        raise invalid(f"'{where}.strict' must be a boolean.", f"{where}.strict")
    given = {name: value for name, value in item.items() if value is not None}
    return read_tool(given, where, "parameters", earlier)


def parse_function_tools(value: object) -> tuple[tuple[Tool, ...], list[dict[str, Any]]]:
    """`tools`, by the rules every dialect shares, and the tools as the response echoes them."""
    tools = parse_tools(value, _read_function_tool)
    fields = ("name", "description", "parameters", "strict")
    items = value if isinstance(value, list) else []
    echoed = [{"type": "function", **{f: item.get(f) for f in fields}} for item in items]
    return tools, echoed


def parse_responses_tool_choice(value: object, tools: tuple[Tool, ...]) -> tuple[ToolChoice, Any]:
    """`tool_choice` ("none", "auto", "required" or `{"type": "function", "name"}`) checked
    against `tools` by chat's rules, and as the response echoes it. "auto" without tools
    offers none (chat refuses it, but this route accepted it before it had tools)."""
    if value is None or (value == "auto" and not tools):
        return ToolChoice("auto" if tools else "none"), "auto"
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if not isinstance(name, str):
            raise invalid("'tool_choice.name' must be a string.", "tool_choice.name")
        named = {"type": "function", "function": {"name": name}}
        return parse_tool_choice(named, tools), {"type": "function", "name": name}
    if value not in ("none", "auto", "required"):
        raise invalid(
            '\'tool_choice\' must be "none", "auto", "required" or {"type": "function", '
            '"name": ...}: only function tools are supported.',
            "tool_choice",
        )
    return parse_tool_choice(value, tools), value


def parse_text_format(text: object) -> tuple[dict[str, Any], str | None]:
    """`text.format` as echoed back, and the JSON schema (as JSON text) it constrains to."""
    if text is None:
        return {"type": "text"}, None
    if not isinstance(text, dict):
        raise invalid('\'text\' must be an object like {"format": {"type": "text"}}.', "text")
    fmt = text.get("format")
    if fmt is None:
        return {"type": "text"}, None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if not isinstance(fmt, dict) or kind not in ("text", "json_schema", "json_object"):
        raise invalid(
            "'text.format.type' must be 'text', 'json_schema' or 'json_object'.",
            "text.format.type",
        )
    if kind == "text":
        return {"type": "text"}, None
    if kind == "json_object":
        return {"type": "json_object"}, JSON_OBJECT_SCHEMA
    name, schema, strict = fmt.get("name"), fmt.get("schema"), fmt.get("strict")
    description = fmt.get("description")
    if not isinstance(name, str) or not name:
        raise invalid("'text.format.name' must be a non-empty string.", "text.format.name")
    if not isinstance(schema, dict):
        raise invalid("'text.format.schema' must be a JSON schema object.", "text.format.schema")
    if strict is not None and not isinstance(strict, bool):
        raise invalid("'text.format.strict' must be a boolean.", "text.format.strict")
    if description is not None and not isinstance(description, str):
        raise invalid("'text.format.description' must be a string.", "text.format.description")
    echoed = {"type": "json_schema", "name": name, "schema": schema, "strict": strict}
    if description is not None:
        echoed["description"] = description
    return echoed, dumps(schema)


def _optional(body: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise invalid(f"'{name}' must be {what}.", name)
    return value


def _parse_metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > METADATA_MAX_PAIRS
        or not all(
            isinstance(v, str) and len(k) <= METADATA_MAX_KEY and len(v) <= METADATA_MAX_VALUE
            for k, v in value.items()
        )
    ):
        raise invalid(
            f"'metadata' must be an object of at most {METADATA_MAX_PAIRS} string values "
            f"(keys up to {METADATA_MAX_KEY} characters, values up to {METADATA_MAX_VALUE}).",
            "metadata",
        )
    return dict(value)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Refuse, rather than ignore, what would change the answer if it were honoured."""
    if body.get("previous_response_id") is not None:
        raise invalid(
            f"'previous_response_id' cannot be used: {NOT_STORED}; send the "
            "whole conversation in 'input'.",
            "previous_response_id",
        )
    if body.get("conversation") is not None:
        raise invalid(
            f"'conversation' cannot be used: {NOT_STORED}; send the whole conversation in 'input'.",
            "conversation",
        )
    if body.get("background"):
        raise invalid(f"'background' mode needs stored responses: {NOT_STORED}.", "background")
    if body.get("prompt") is not None:
        raise invalid("Stored prompt templates ('prompt') are not supported.", "prompt")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and not (is_int(top_logprobs) and top_logprobs == 0):
        raise invalid("'top_logprobs' is not supported on /v1/responses yet.", "top_logprobs")
    include = body.get("include")
    if isinstance(include, list) and "message.output_text.logprobs" in include:
        raise invalid("Log-probabilities are not supported on /v1/responses yet.", "include")


def parse_responses_request(body: object) -> ResponsesRequest:
    """Validate a decoded `POST /v1/responses` body; raises InvalidRequest naming the field."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string; see GET /v1/models.", "model")
    if "input" not in body:
        raise invalid("'input' is required: a string or a list of input items.", "input")
    messages = parse_input(body["input"])
    instructions = _optional(body, "instructions", str, "a string")
    if instructions is not None:
        messages = (ChatMessage("system", instructions), *messages)

    temperature = optional_number(body, "temperature", 0.0, 2.0)
    top_p = optional_number(body, "top_p", 0.0, 1.0, low_open=True)
    max_output_tokens = optional_positive_int(body, "max_output_tokens")
    stream = bool(_optional(body, "stream", bool, "a boolean"))
    _optional(body, "store", bool, "a boolean")
    parallel_tool_calls = _optional(body, "parallel_tool_calls", bool, "a boolean")
    user = _optional(body, "user", str, "a string")
    _optional(body, "reasoning", dict, "an object")  # ignored: see docs/api.md
    truncation = body.get("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise invalid("'truncation' must be 'auto' or 'disabled'.", "truncation")
    metadata = _parse_metadata(body.get("metadata"))
    text_format, json_schema = parse_text_format(body.get("text"))
    _refuse_unsupported(body)
    tools, echoed_tools = parse_function_tools(body.get("tools"))
    tool_choice, echoed_choice = parse_responses_tool_choice(body.get("tool_choice"), tools)
    if tool_choice.forced:
        if json_schema is not None:
            raise invalid(
                "A forced 'tool_choice' and a JSON 'text.format' cannot both constrain the reply.",
                "tool_choice",
            )
        json_schema = forced_call_schema(tools, tool_choice)

    params = SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        max_tokens=max_output_tokens,
        json_schema=json_schema,
    )
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_output_tokens,
        "metadata": metadata,
        "parallel_tool_calls": True if parallel_tool_calls is None else parallel_tool_calls,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "text": {"format": text_format},
        "tool_choice": echoed_choice,
        "tools": echoed_tools,
        "user": user,
    }
    return ResponsesRequest(model, messages, params, stream, echo, tools, tool_choice)
