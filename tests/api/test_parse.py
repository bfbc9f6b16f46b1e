"""`parse_chat_request` on valid bodies (the invalid ones are covered over HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from exo.api.backend import InvalidRequest
from exo.api.openai_request import parse_chat_request
from exo.api.validation import decode_json_body
from exo.engine.protocol import ChatMessage, SamplingParams


def parse(**fields: Any) -> Any:
    return parse_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_defaults() -> None:
    chat = parse()
    assert chat.model == "m"
    assert chat.messages == (ChatMessage("user", "hi"),)
    assert chat.params == SamplingParams(temperature=1.0, top_p=1.0)
    assert (chat.stream, chat.include_usage) == (False, False)


def test_roles_and_content_forms() -> None:
    chat = parse(
        messages=[
            {"role": "developer", "content": "d"},
            {
                "role": "system",
                "content": [{"type": "text", "text": "s1"}, {"type": "text", "text": "s2"}],
            },
            {"role": "user", "content": "u", "name": "someone"},
            {"role": "assistant", "content": None},
            {"role": "tool", "content": "result", "tool_call_id": "x"},
        ]
    )
    assert chat.messages == (
        ChatMessage("system", "d"),
        ChatMessage("system", "s1\ns2"),
        ChatMessage("user", "u"),
        ChatMessage("assistant", ""),
        ChatMessage("tool", "result", tool_call_id="x"),
    )


@pytest.mark.parametrize(
    ("fields", "params"),
    [
        ({"temperature": 0}, SamplingParams(temperature=0.0)),
        ({"temperature": 2, "top_p": 1}, SamplingParams(temperature=2.0, top_p=1.0)),
        ({"top_p": 1e-9}, SamplingParams(top_p=1e-9)),
        ({"max_tokens": 5, "max_completion_tokens": 9}, SamplingParams(max_tokens=9)),
        ({"stop": ["a", "b", "c", "d"]}, SamplingParams(stop=("a", "b", "c", "d"))),
        ({"stop": None, "seed": -(2**63)}, SamplingParams(seed=-(2**63))),
        ({"n": 1, "tools": [], "response_format": {"type": "text"}}, SamplingParams()),
        ({"user": "u", "parallel_tool_calls": True}, SamplingParams()),  # ignored
        (
            {"top_k": 40, "min_p": 0.05, "presence_penalty": -1, "frequency_penalty": 0.5},
            SamplingParams(top_k=40, min_p=0.05, presence_penalty=-1.0, frequency_penalty=0.5),
        ),
        ({"top_k": -1, "repetition_penalty": 1.0}, SamplingParams()),  # both mean "off"
        ({"repetition_penalty": 1.2}, SamplingParams(repetition_penalty=1.2)),
        (
            {"logit_bias": {"50": -100, "7": 2.5}},
            SamplingParams(logit_bias=((7, 2.5), (50, -100.0))),
        ),
        ({"ignore_eos": True}, SamplingParams(ignore_eos=True)),
        ({"ignore_eos": None}, SamplingParams()),
        ({"logprobs": True}, SamplingParams(logprobs=0)),
        ({"logprobs": True, "top_logprobs": 3}, SamplingParams(logprobs=3)),
        ({"logprobs": False, "top_logprobs": None}, SamplingParams()),
        (
            {"response_format": {"type": "json_object"}},
            SamplingParams(json_schema='{"type": "object"}'),
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "array"}, "strict": True},
                }
            },
            SamplingParams(json_schema='{"type": "array"}'),
        ),
    ],
)
def test_sampling_fields(fields: dict[str, Any], params: SamplingParams) -> None:
    assert parse(**fields).params == params


def test_stream_options() -> None:
    chat = parse(stream=True, stream_options={"include_usage": True})
    assert (chat.stream, chat.include_usage) == (True, True)
    assert parse(stream=True, stream_options={}).include_usage is False


@pytest.mark.parametrize(
    "raw", [b"\xff", b"{", b"   ", b'{"a": Infinity}', b"[" * 100_000], ids=repr
)
def test_decode_json_body_rejects(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_json_body(raw)
    assert caught.value.param is None


def test_decode_json_body_accepts_utf8() -> None:
    assert decode_json_body('{"x": "héllo ✓"}'.encode()) == {"x": "héllo ✓"}
