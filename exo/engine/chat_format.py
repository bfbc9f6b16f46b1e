"""Turn a chat with tools into what a model's chat template takes.

Templates that know tools (Qwen, Llama 3.1+, Mistral, Hermes...) get them natively:
`tools=` and assistant `tool_calls`. A template that never mentions tools (the bundled
SmolLM2's) would drop them silently, so exo describes the tools in the system message
itself and asks for calls in the `<tool_call>` tags most open models were trained on;
`exo.api.tool_calls` parses replies in that form either way.
"""

from __future__ import annotations

import json
from typing import Any

from exo.engine import protocol

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

_TOOLS_PROMPT = """# Tools

You can call functions to answer the user. Each function, as a JSON object with its name, \
what it does, and the JSON schema of its arguments:
{tools}

To call a function, write one line per call and nothing else on it:
{open}{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}{close}
The result of each call comes back in the next turn inside <tool_response></tool_response>."""


def template_knows_tools(chat_template: object) -> bool:
    """Whether a chat template renders `tools` (a string test: templates are Jinja text)."""
    return isinstance(chat_template, str) and "tools" in chat_template


def tool_schema(tool: protocol.Tool) -> dict[str, Any]:
    """A tool in OpenAI's function shape, the shape chat templates expect."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": json.loads(tool.parameters),
        },
    }


def _arguments(call: protocol.ToolCall) -> Any:
    try:
        return json.loads(call.arguments)
    except json.JSONDecodeError:
        return call.arguments  # a client echoing malformed arguments back: keep the text


def render_call(call: protocol.ToolCall) -> str:
    """One call as the tagged line the fallback prompt asks the model to write."""
    body = json.dumps({"name": call.name, "arguments": _arguments(call)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def native_messages(messages: tuple[protocol.ChatMessage, ...]) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = []
    for m in messages:
        entry: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": _arguments(c)},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            entry["tool_call_id"] = m.tool_call_id
        chat.append(entry)
    return chat


def described_tools_messages(
    messages: tuple[protocol.ChatMessage, ...], tools: tuple[protocol.Tool, ...]
) -> list[dict[str, str]]:
    """Plain role/content messages for a template without tools: the tool list goes into
    the system message, calls and results become tagged text."""
    chat: list[dict[str, str]] = []
    for m in messages:
        if m.role == "tool":
            chat.append(
                {"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"}
            )
            continue
        content = "\n".join([m.content, *map(render_call, m.tool_calls)]).strip("\n")
        chat.append({"role": m.role, "content": content})
    if tools:
        listing = "\n".join(json.dumps(tool_schema(t)["function"]) for t in tools)
        prompt = _TOOLS_PROMPT.format(tools=listing, open=TOOL_CALL_OPEN, close=TOOL_CALL_CLOSE)
        if chat and chat[0]["role"] == "system":
            chat[0] = {"role": "system", "content": f"{chat[0]['content']}\n\n{prompt}"}
        else:
            chat.insert(0, {"role": "system", "content": prompt})
    return chat
