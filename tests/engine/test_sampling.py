"""The engine's sampling controls, log-probabilities, stop reporting, count-only and raw
prompts, on the real bundled model loaded in this process; and the tool rendering."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import pytest

from exo.engine import chat_format, protocol
from exo.engine.mlx_engine import MlxEngine
from exo.engine.sampling import reply_penalty

QUESTION = (protocol.ChatMessage("user", "What is the capital of France?"),)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[MlxEngine]:
    yield MlxEngine.load(model_dir, 0, 30)


def run(
    engine: MlxEngine, params: protocol.SamplingParams, **fields: object
) -> tuple[list[protocol.TokenOut], protocol.Finished]:
    request = protocol.GenerateRequest("t", fields.pop("messages", QUESTION), params, **fields)  # type: ignore[arg-type]
    out = list(engine.generate(request, lambda: False))
    *chunks, finished = out
    assert isinstance(finished, protocol.Finished)
    return [c for c in chunks if isinstance(c, protocol.TokenOut)], finished


def text(chunks: list[protocol.TokenOut]) -> str:
    return "".join(c.text for c in chunks)


def test_count_only_reports_the_prompt_and_generates_nothing(engine: MlxEngine) -> None:
    chunks, finished = run(engine, protocol.SamplingParams(max_tokens=0))
    assert chunks == []
    assert finished.prompt_tokens == len(engine.encode_chat(QUESTION))
    assert finished.completion_tokens == 0


def test_the_matched_stop_string_is_reported(engine: MlxEngine) -> None:
    greedy = protocol.SamplingParams(temperature=0, max_tokens=24)
    full = text(run(engine, greedy)[0])
    assert "Paris" in full
    chunks, finished = run(engine, protocol.SamplingParams(temperature=0, stop=("Paris", "zzz")))
    assert (finished.finish_reason, finished.stop_sequence) == ("stop", "Paris")
    assert text(chunks) == full[: full.index("Paris")]
    _, ended = run(engine, protocol.SamplingParams(temperature=0))
    assert (ended.finish_reason, ended.stop_sequence) == ("stop", None)


def test_greedy_logprobs_head_their_alternatives(engine: MlxEngine) -> None:
    chunks, finished = run(engine, protocol.SamplingParams(temperature=0, max_tokens=8, logprobs=4))
    entries = [e for c in chunks for e in c.logprobs]
    assert len(entries) == finished.completion_tokens > 3
    assert "".join(e.text for e in entries) == text(chunks)
    for entry in entries:
        assert len(entry.top) == 4
        assert entry.top[0].logprob == pytest.approx(entry.logprob, abs=1e-5)
        assert [t.logprob for t in entry.top] == sorted(
            (t.logprob for t in entry.top), reverse=True
        )
        assert sum(math.exp(t.logprob) for t in entry.top) <= 1 + 1e-4
    none, _ = run(engine, protocol.SamplingParams(temperature=0, max_tokens=4))
    assert all(c.logprobs == () for c in none)


def test_logit_bias_forces_a_token(engine: MlxEngine) -> None:
    forced = engine.tokenizer.encode(" banana", add_special_tokens=False)[-1]
    chunks, _ = run(
        engine,
        protocol.SamplingParams(temperature=0, max_tokens=3, logit_bias=((forced, 100.0),)),
    )
    assert [c.token for c in chunks] == [forced] * 3


def test_seeded_sampling_with_every_control_repeats(engine: MlxEngine) -> None:
    params = protocol.SamplingParams(
        temperature=1.2,
        top_k=20,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        repetition_penalty=1.1,
        seed=11,
        max_tokens=16,
    )
    first, second = text(run(engine, params)[0]), text(run(engine, params)[0])
    assert first == second and first
    # top_k 1 is greedy whatever the temperature.
    one = protocol.SamplingParams(temperature=1.5, top_k=1, max_tokens=12, seed=1)
    assert text(run(engine, one)[0]) == text(
        run(engine, protocol.SamplingParams(temperature=0, max_tokens=12))[0]
    )


def test_a_negative_seed_samples_repeatably(engine: MlxEngine) -> None:
    # The API takes any signed 64-bit seed, as OpenAI's does; MLX takes unsigned ones.
    params = protocol.SamplingParams(temperature=1.3, max_tokens=12, seed=-7)
    first, second = text(run(engine, params)[0]), text(run(engine, params)[0])
    assert first == second and first
    lowest = protocol.SamplingParams(temperature=1.3, max_tokens=4, seed=-(2**63))
    assert text(run(engine, lowest)[0])


def test_a_raw_prompt_skips_the_chat_template(engine: MlxEngine) -> None:
    prompt = "The capital of France is"
    chunks, finished = run(
        engine, protocol.SamplingParams(temperature=0, max_tokens=4), messages=(), text=prompt
    )
    assert finished.prompt_tokens == len(engine.tokenizer.encode(prompt))
    assert "Paris" in text(chunks)
    with pytest.raises(ValueError, match="empty"):
        run(engine, protocol.SamplingParams(), messages=(), text="")


def test_penalties_count_only_the_reply() -> None:
    penalty = reply_penalty(prompt_tokens=2, presence=1.0, frequency=0.5)
    tokens = mx.array([3, 3, 1, 1, 2])  # prompt [3, 3], reply [1, 1, 2]
    logits = mx.zeros((1, 5))
    out: list[list[float]] = penalty(tokens, logits).tolist()  # type: ignore[assignment]
    assert out == [[0.0, -2.0, -1.5, 0.0, 0.0]]  # token 3 is only in the prompt
    untouched: list[list[float]] = penalty(mx.array([3, 3]), logits).tolist()  # type: ignore[assignment]
    assert untouched == [[0.0] * 5]


WEATHER = protocol.Tool("get_weather", "Weather in a city", '{"type": "object"}')
CALL = protocol.ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
TURNS = (
    protocol.ChatMessage("system", "Be brief."),
    protocol.ChatMessage("user", "Weather in Oslo?"),
    protocol.ChatMessage("assistant", "", (CALL,)),
    protocol.ChatMessage("tool", "cold", tool_call_id="call_1"),
)


def test_templates_without_tools_get_them_in_the_system_message() -> None:
    chat = chat_format.described_tools_messages(TURNS, (WEATHER,))
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert chat[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '"name": "get_weather"' in chat[0]["content"]
    assert chat[2]["content"] == chat_format.render_call(CALL)
    assert json.loads(chat[2]["content"].removeprefix("<tool_call>").removesuffix("</tool_call>"))[
        "arguments"
    ] == {"city": "Oslo"}
    assert chat[3]["content"] == "<tool_response>\ncold\n</tool_response>"
    # No tools and no tool turns: the chat is unchanged.
    plain = chat_format.described_tools_messages(TURNS[:2], ())
    assert plain == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
    ]


def test_templates_with_tools_get_them_natively() -> None:
    chat = chat_format.native_messages(TURNS)
    assert chat[2]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
        }
    ]
    assert chat[3] == {"role": "tool", "content": "cold", "tool_call_id": "call_1"}
    assert chat_format.template_knows_tools("{% if tools %}…{% endif %}")
    assert not chat_format.template_knows_tools("{{ messages }}")
    assert not chat_format.template_knows_tools(None)


def test_the_bundled_template_shows_the_tools(engine: MlxEngine) -> None:
    rendered = engine.tokenizer.decode(engine.encode_chat(TURNS, (WEATHER,)))
    assert "get_weather" in rendered and "<tool_response>" in rendered
