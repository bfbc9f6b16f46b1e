"""Anthropic Messages request bodies, validated into chat messages, sampling and tools.

Every violation is an `InvalidRequest` naming the field; `exo.api.anthropic` answers it in
Anthropic's error shape. Text and custom tools are read; image and document blocks,
server tools and extended thinking are refused rather than ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from exo.api.openai import CONTENT_PART_SEPARATOR
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
    parse_stop,
    text_parts,
)
from exo.engine.protocol import ChatMessage, SamplingParams, Tool, ToolCall

MESSAGES_PATH = "/v1/messages"
# Anthropic documents no cap; OpenAI's is 4. Each one costs the engine a suffix check per
# token, so keep it small but generous.
MAX_STOP_SEQUENCES = 16
ROLES = ("user", "assistant")
NO_TOOLS = ToolChoice("none")
_ONLY_TEXT = "only text blocks are supported here: not images or documents"
_UNSUPPORTED_BLOCKS = "images, documents and thinking blocks are not supported"


# ---------------------------------------------------------------------------------------------
# Validation


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
    """A validated `POST /v1/messages` body."""

    prompt: Prompt
    params: SamplingParams
    stream: bool = False


def _text(value: object, where: str) -> str:
    """A string, or the text blocks of a list joined; any other kind of block is refused."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid(f"'{where}' must be a string or a list of text blocks.", where)
    texts = text_parts(value, where, ("text",), _ONLY_TEXT)
    return CONTENT_PART_SEPARATOR.join(texts)


def _tool_use(block: Mapping[str, Any], where: str) -> ToolCall:
    """An assistant's earlier call, sent back so that the model sees what it asked for."""
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if (
        not isinstance(call_id, str)
        or not isinstance(name, str)
        or not isinstance(arguments, dict)
        or not (call_id and name)
    ):
        raise invalid(
            f'\'{where}\' must be {{"type": "tool_use", "id", "name", "input": {{...}}}}.', where
        )
    return ToolCall(call_id, name, json.dumps(arguments, ensure_ascii=False))


def _tool_result(block: Mapping[str, Any], where: str) -> ChatMessage:
    """A `tool` message answering call `tool_use_id`. Chat templates have no error flag,
    so an `is_error` result says so in its text."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(
            f"'{where}.tool_use_id' must be the id of an earlier tool_use block.",
            f"{where}.tool_use_id",
        )
    content = block.get("content")
    text = "" if content is None else _text(content, f"{where}.content")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise invalid(f"'{where}.is_error' must be a boolean.", f"{where}.is_error")
    return ChatMessage("tool", f"Error: {text}" if is_error else text, tool_call_id=call_id)


def _turn(role: str, content: object, where: str) -> list[ChatMessage]:
    """One turn's messages. A user turn's tool results become `tool` messages, ahead of
    its text (as Anthropic requires them first); an assistant's tool_use blocks, its calls."""
    if isinstance(content, str):
        return [ChatMessage(role, content)]
    if not isinstance(content, list):
        raise invalid(f"'{where}' must be a string or a list of content blocks.", where)
    kinds = ("text", "tool_use") if role == "assistant" else ("text", "tool_result")
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[ChatMessage] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in kinds:
            raise invalid(
                f"'{at}.type' must be {kinds[0]!r} or {kinds[1]!r} in a {role} turn; got "
                f"{kind!r} ({_UNSUPPORTED_BLOCKS}).",
                f"{at}.type",
            )
        assert isinstance(block, dict)  # it has a type
        if kind == "tool_use":
            calls.append(_tool_use(block, at))
        elif kind == "tool_result":
            results.append(_tool_result(block, at))
        elif isinstance(block.get("text"), str):
            texts.append(block["text"])
        else:
            raise invalid(f"'{at}.text' must be a string.", f"{at}.text")
    if texts or calls or not results:
        text = CONTENT_PART_SEPARATOR.join(texts)
        results.append(ChatMessage(role, text, tool_calls=tuple(calls)))
    return results


def _parse_turns(value: object) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise invalid("'messages' must be a non-empty list of messages.", "messages")
    turns: list[ChatMessage] = []
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object with 'role' and 'content'.", where)
        role = item.get("role")
        if role not in ROLES:
            raise invalid(
                f"'{where}.role' must be 'user' or 'assistant'; got {role!r} "
                "(a system prompt goes in the top-level 'system').",
                f"{where}.role",
            )
        turns += _turn(str(role), item.get("content"), f"{where}.content")
    if turns[-1].role == "assistant":
        # Anthropic continues a final assistant turn; exo's chat templates cannot yet.
        raise invalid(
            "A final assistant message (prefill) is not supported yet; end with a user message.",
            f"messages[{len(value) - 1}]",
        )
    return tuple(turns)


def _read_tool(item: object, where: str, earlier: Sequence[Tool]) -> Tool:
    """A custom tool `{"name", "description", "input_schema"}`. Anthropic's own tools
    (web search, bash, text editor, ...) run on Anthropic's side or need its tool
    definitions: refused rather than offered as empty functions."""
    if not isinstance(item, dict):
        raise invalid(f"'{where}' must be an object with 'name' and 'input_schema'.", where)
    kind = item.get("type")
    if kind not in (None, "custom"):
        raise invalid(
            f"'{where}.type' {kind!r} is a server or Anthropic-defined tool, which exo does "
            "not support; define a custom tool with 'name' and 'input_schema'.",
            f"{where}.type",
        )
    schema = item.get("input_schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise invalid(
            f'\'{where}.input_schema\' must be a JSON schema object with "type": "object".',
            f"{where}.input_schema",
        )
    return read_tool(item, where, "input_schema", earlier)


# Anthropic's tool_choice types, as the OpenAI modes that `parse_tool_choice` checks.
_CHOICE_MODES = {"auto": "auto", "any": "required", "none": "none"}


def _parse_tool_choice(value: object, tools: tuple[Tool, ...]) -> ToolChoice:
    """`auto`, `any` (a call is required), `tool` (that one is) or `none`."""
    if value is None:
        return parse_tool_choice(None, tools)
    kind = value.get("type") if isinstance(value, dict) else None
    mode = _CHOICE_MODES.get(kind) if isinstance(kind, str) else None
    named = kind == "tool" and isinstance(value, dict) and isinstance(value.get("name"), str)
    if not isinstance(value, dict) or not (named or mode):
        raise invalid(
            '\'tool_choice\' must be {"type": "auto"}, {"type": "any"}, {"type": "none"} or '
            '{"type": "tool", "name": ...}.',
            "tool_choice",
        )
    single = value.get("disable_parallel_tool_use")
    if single is not None and not isinstance(single, bool):
        raise invalid(
            "'tool_choice.disable_parallel_tool_use' must be a boolean.",
            "tool_choice.disable_parallel_tool_use",
        )
    if named:
        return parse_tool_choice({"type": "function", "function": value}, tools)
    # `auto` without tools is accepted, as it was before tools were: nothing to call.
    return parse_tool_choice(mode if tools or mode != "auto" else None, tools)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    thinking = body.get("thinking")
    if thinking is not None and not (
        isinstance(thinking, dict) and thinking.get("type") == "disabled"
    ):
        raise invalid(
            'Extended thinking is not supported; omit \'thinking\' or send {"type": "disabled"}.',
            "thinking",
        )
    output_config = body.get("output_config")
    if isinstance(output_config, dict) and output_config.get("format") is not None:
        raise invalid(
            f"Structured output (output_config.format) is not supported on {MESSAGES_PATH} yet.",
            "output_config.format",
        )


def parse_prompt(body: object) -> Prompt:
    """The model, chat and tools of a messages or count_tokens body."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string; see GET /v1/models.", "model")
    _refuse_unsupported(body)
    turns = _parse_turns(body.get("messages"))
    system = body.get("system")
    system_text = "" if system is None else _text(system, "system")
    tools = parse_tools(body.get("tools"), _read_tool)
    return Prompt(
        model=model,
        messages=((ChatMessage("system", system_text),) if system_text else ()) + turns,
        tools=tools,
        tool_choice=_parse_tool_choice(body.get("tool_choice"), tools),
    )


def parse_messages_request(body: object) -> MessagesRequest:
    """Validate a decoded `/v1/messages` body; raises InvalidRequest naming the field."""
    prompt = parse_prompt(body)
    assert isinstance(body, dict)  # parse_prompt checked
    if body.get("max_tokens") is None:
        raise invalid("'max_tokens' is required.", "max_tokens")
    max_tokens = optional_positive_int(body, "max_tokens")
    temperature = optional_number(body, "temperature", 0.0, 1.0)
    top_p = optional_number(body, "top_p", 0.0, 1.0, low_open=True)
    top_k = body.get("top_k", 0)
    if not is_int(top_k) or top_k < 0:
        raise invalid(f"'top_k' must be an integer of at least 0; got {top_k!r}.", "top_k")
    stop = parse_stop(
        body.get("stop_sequences"),
        name="stop_sequences",
        limit=MAX_STOP_SEQUENCES,
        allow_string=False,
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean.", "stream")
    params = SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        max_tokens=max_tokens,
        stop=stop,
        top_k=top_k,
        # A forced call is not left to the model's habits: decoding is constrained to it.
        json_schema=(
            forced_call_schema(prompt.tools, prompt.tool_choice)
            if prompt.tool_choice.forced
            else None
        ),
    )
    return MessagesRequest(prompt=prompt, params=params, stream=stream)
