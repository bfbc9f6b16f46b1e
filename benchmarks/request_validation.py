"""What validating one request body costs, per dialect, and what typed models cost.

For each dialect: the bytes of a typical body (a system and a user message, sampling
options, one tool) through what a route does before it calls the backend: decode the
JSON, check it, build the request: every dialect's bodies are typed models (msgspec:
`exo/api/*_request.py`). Beside them, the OpenAI chat body decoded into an equivalent
model by msgspec alone and by pydantic v2 in strict mode, the two candidates of issue 18. Medians of `--rounds` rounds of `--number`
calls, in microseconds per request.

    .venv/bin/python benchmarks/request_validation.py [--rounds 7] [--number 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import pydantic

from exo.api.anthropic_request import parse_messages_request
from exo.api.ollama_request import parse_chat
from exo.api.openai_request import parse_chat_request
from exo.api.responses_request import parse_responses_request
from exo.api.validation import decode_json_body

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
SYSTEM = "You are a helpful assistant. Answer briefly."
USER = "What is the weather in Paris today, and should I take an umbrella?"

OPENAI = {
    "model": "smollm2-135m",
    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
    "temperature": 0.7,
    "top_p": 0.9,
    "max_tokens": 128,
    "stream": True,
    "stop": ["\n\n"],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": WEATHER_PARAMETERS,
            },
        }
    ],
}
ANTHROPIC = {
    "model": "smollm2-135m",
    "system": SYSTEM,
    "messages": [{"role": "user", "content": USER}],
    "max_tokens": 128,
    "temperature": 0.7,
    "stream": True,
    "tools": [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": WEATHER_PARAMETERS,
        }
    ],
}
RESPONSES = {
    "model": "smollm2-135m",
    "instructions": SYSTEM,
    "input": USER,
    "temperature": 0.7,
    "max_output_tokens": 128,
    "stream": True,
    "tools": [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Current weather",
            "parameters": WEATHER_PARAMETERS,
        }
    ],
}
OLLAMA = {
    "model": "smollm2-135m",
    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
    "options": {"temperature": 0.7, "top_p": 0.9, "num_predict": 128, "stop": ["\n\n"]},
    "tools": OPENAI["tools"],
}


# The OpenAI chat body as typed models, for the two candidate libraries.
class MsgMessage(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None


class MsgFunction(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class MsgTool(msgspec.Struct):
    type: Literal["function"]
    function: MsgFunction


class MsgChat(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[MsgMessage], msgspec.Meta(min_length=1)]
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stream: bool = False
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    tools: list[MsgTool] | None = None


class PydMessage(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None


class PydFunction(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class PydTool(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    type: Literal["function"]
    function: PydFunction


class PydChat(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    model: Annotated[str, pydantic.Field(min_length=1)]
    messages: Annotated[list[PydMessage], pydantic.Field(min_length=1)]
    temperature: Annotated[float, pydantic.Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, pydantic.Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, pydantic.Field(ge=1)] | None = None
    stream: bool = False
    stop: str | Annotated[list[str], pydantic.Field(max_length=4)] | None = None
    tools: list[PydTool] | None = None


def cases() -> dict[str, Callable[[], object]]:
    raw = {name: json.dumps(body).encode() for name, body in _bodies().items()}
    msg_decoder = msgspec.json.Decoder(MsgChat)
    return {
        "openai chat (typed, msgspec)": lambda: parse_chat_request(decode_json_body(raw["openai"])),
        "anthropic messages (typed, msgspec)": lambda: parse_messages_request(
            decode_json_body(raw["anthropic"])
        ),
        "responses (typed, msgspec)": lambda: parse_responses_request(
            decode_json_body(raw["responses"])
        ),
        "ollama chat (typed, msgspec)": lambda: parse_chat(decode_json_body(raw["ollama"])),
        "openai chat, msgspec model": lambda: msg_decoder.decode(raw["openai"]),
        "openai chat, pydantic strict model": lambda: PydChat.model_validate_json(raw["openai"]),
        "json decode only (stdlib)": lambda: json.loads(raw["openai"]),
    }


def _bodies() -> dict[str, dict[str, Any]]:
    return {"openai": OPENAI, "anthropic": ANTHROPIC, "responses": RESPONSES, "ollama": OLLAMA}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args(argv)
    width = max(len(name) for name in cases())
    print(f"{'case':<{width}}  µs per request (median of {args.rounds} x {args.number})")
    for name, call in cases().items():
        call()  # warm, and fail loudly if a body does not validate
        times = timeit.repeat(call, number=args.number, repeat=args.rounds)
        micros = statistics.median(times) / args.number * 1e6
        print(f"{name:<{width}}  {micros:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
