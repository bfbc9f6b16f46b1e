"""Tools in, tool calls out: OpenAI's `tools`/`tool_choice`, and calls parsed from replies.

A model asks for a call by writing `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
(the form Hermes, Qwen and SmolLM3 were trained on, and the one exo's fallback prompt asks
for; see `exo.engine.chat_format`). `CallParser` reads the reply as it streams: text outside
the tags goes to the client as it comes, each complete call as soon as its closing tag
arrives. A tag that does not hold a call to an offered function stays text.

When the client demands a call (`tool_choice` "required" or a named function), exo does
not hope for tags: it constrains decoding to one JSON object `{"name", "arguments"}` that
matches an offered function's schema, and the whole reply is that call.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from exo.api.validation import invalid
from exo.engine.chat_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from exo.engine.protocol import Tool, ToolCall

MAX_TOOLS = 128


@frozen
class ToolChoice:
    """What the client allows: `mode` "none", "auto" or "required"; `name` forces one."""

    mode: str = "auto"
    name: str | None = None

    @property
    def forced(self) -> bool:
        return self.mode == "required"


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def checked_tool_choice(choice: ToolChoice | None, tools: tuple[Tool, ...]) -> ToolChoice:
    """A dialect's choice, once its model has read it, checked against `tools`; none
    given is `auto` with tools, `none` without."""
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if choice.mode != "none" and not tools:
        raise invalid("'tool_choice' needs 'tools' to choose from.", "tool_choice")
    if choice.name is not None and all(t.name != choice.name for t in tools):
        raise invalid(
            f"'tool_choice' names {choice.name!r}, which is not in 'tools'.", "tool_choice"
        )
    return choice


def forced_call_schema(tools: tuple[Tool, ...], choice: ToolChoice) -> str:
    """The JSON schema (as text) a forced reply must match: one call of an allowed tool."""
    allowed = [t for t in tools if choice.name is None or t.name == choice.name]
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": json.loads(t.parameters),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in allowed
    ]
    return json.dumps(options[0] if len(options) == 1 else {"anyOf": options})


def read_call(text: str, names: frozenset[str]) -> ToolCall | None:
    """A call from `{"name": ..., "arguments": {...}}` text, or None if it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), str(data["name"]), json.dumps(arguments, ensure_ascii=False))


def _partial_tag_at_end(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that could begin `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class CallParser:
    """Splits a streamed reply into text for the client and tool calls.

    `forced`: the whole reply is one JSON call (constrained decoding made it so).
    """

    def __init__(self, tools: tuple[Tool, ...], forced: bool = False) -> None:
        self._names = frozenset(t.name for t in tools)
        self._forced = forced
        self._pending = ""
        self._inside = False
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Text that is safe to show now, and the calls completed by this piece."""
        self._pending += text
        if self._forced:
            return "", []
        shown: list[str] = []
        found: list[ToolCall] = []
        while True:
            if self._inside:
                end = self._pending.find(TOOL_CALL_CLOSE)
                if end < 0:
                    break
                body = self._pending[:end]
                self._pending = self._pending[end + len(TOOL_CALL_CLOSE) :]
                self._inside = False
                call = read_call(body.strip(), self._names)
                if call is None:
                    shown.append(f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}")
                else:
                    found.append(call)
                continue
            start = self._pending.find(TOOL_CALL_OPEN)
            if start < 0:
                keep = _partial_tag_at_end(self._pending, TOOL_CALL_OPEN)
                cut = len(self._pending) - keep
                shown.append(self._pending[:cut])
                self._pending = self._pending[cut:]
                break
            shown.append(self._pending[:start])
            self._pending = self._pending[start + len(TOOL_CALL_OPEN) :]
            self._inside = True
        self.calls.extend(found)
        return "".join(shown), found

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The reply ended: what is left as text, and a last call whose tag never closed
        (small models often stop right after the JSON)."""
        rest, self._pending = self._pending, ""
        call = read_call(rest.strip(), self._names) if self._inside or self._forced else None
        if call is not None:
            self.calls.append(call)
            return "", [call]
        if self._inside:
            rest = TOOL_CALL_OPEN + rest
        return rest, []


def offered(tools: tuple[Tool, ...], choice: ToolChoice) -> tuple[Tool, ...]:
    """The tools the model is shown: none for "none", only the named one when forced."""
    if choice.mode == "none":
        return ()
    return tuple(t for t in tools if choice.name is None or t.name == choice.name)


def is_tool_message(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "tool"
