"""Every dialect and the OpenAI parameters beyond plain chat, through the official
clients against one real `exo node` and the real MLX engine (the bundled model).

The Ollama client's real-node test lives with the node's other tests in test_single_node.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from openai.types.responses import FunctionToolParam

from tests.integration.nodes import NodeProcess
from tests.integration.streams import MODEL, client
from tests.integration.test_single_node import QUESTION

pytestmark = pytest.mark.slow

# anthropic 2.x has no `temperature` keyword; the field still goes in the body.
GREEDY: Any = {"temperature": 0}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def assert_person(data: Any) -> None:
    assert set(data) == {"name", "age", "role"}, data
    assert isinstance(data["name"], str) and isinstance(data["age"], int)
    assert data["role"] in ("admin", "user")


def test_the_anthropic_client_works_unchanged(node: NodeProcess) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    with anthropic.Anthropic(base_url=node.url, api_key="x", timeout=300, max_retries=0) as client:
        reply = client.messages.create(
            model=MODEL, max_tokens=256, messages=messages, extra_body=GREEDY
        )
        [block] = reply.content
        assert block.type == "text" and "Paris" in block.text
        assert reply.stop_reason == "end_turn", reply
        with client.messages.stream(
            model=MODEL, max_tokens=256, messages=messages, extra_body=GREEDY
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert streamed == block.text
        # The same prompt again: all of it but the last token comes from the prompt
        # cache, which Anthropic counts apart from input_tokens.
        read = final.usage.cache_read_input_tokens or 0
        assert (final.stop_reason, final.usage.input_tokens + read) == (
            "end_turn",
            reply.usage.input_tokens,
        )
        assert final.usage.input_tokens == 1

        short = client.messages.create(
            model=MODEL, max_tokens=3, messages=messages, extra_body=GREEDY
        )
        assert (short.stop_reason, short.usage.output_tokens) == ("max_tokens", 3)

        stopped = client.messages.create(
            model=MODEL,
            max_tokens=256,
            messages=messages,
            stop_sequences=["Paris"],
            extra_body=GREEDY,
        )
        assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "Paris")
        [part] = stopped.content
        assert part.type == "text" and block.text.startswith(part.text)
        assert "Paris" not in part.text

        counted = client.messages.count_tokens(model=MODEL, messages=messages)
        assert isinstance(counted.input_tokens, int) and counted.input_tokens > 0
        assert counted.input_tokens == reply.usage.input_tokens

        # A forced tool: decoding is constrained to one call matching its input_schema.
        schema: Any = WEATHER["function"].get("parameters")
        called = client.messages.create(
            model=MODEL,
            max_tokens=40,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[
                {
                    "name": "get_weather",
                    "description": "Current weather in a city",
                    "input_schema": schema,
                }
            ],
            tool_choice={"type": "tool", "name": "get_weather"},
            extra_body=GREEDY,
        )
        assert called.stop_reason == "tool_use", called
        [use] = [block for block in called.content if block.type == "tool_use"]
        assert use.name == "get_weather" and use.id.startswith("toolu_")
        assert isinstance(use.input, dict) and set(use.input) == {"city"}, use.input
        assert isinstance(use.input["city"], str)


def test_responses_answer_streamed_and_cut_short(node: NodeProcess) -> None:
    with client(node) as c:
        plain = c.responses.create(model=MODEL, input=QUESTION, temperature=0)
        assert plain.status == "completed", plain
        assert "Paris" in plain.output_text
        assert plain.usage is not None and plain.usage.output_tokens > 0

        with c.responses.stream(model=MODEL, input=QUESTION, temperature=0) as stream:
            streamed = "".join(
                event.delta for event in stream if event.type == "response.output_text.delta"
            )
            final = stream.get_final_response()
        assert streamed == final.output_text == plain.output_text

        short = c.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=3)
        assert short.status == "incomplete"
        assert short.incomplete_details is not None
        assert short.incomplete_details.reason == "max_output_tokens"
        assert short.usage is not None and short.usage.output_tokens == 3

        shaped = c.responses.create(
            model=MODEL,
            input="Describe a person.",
            text={"format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA}},
            max_output_tokens=60,
        )
    assert_person(json.loads(shaped.output_text))

    # A forced function call: one function_call item, its arguments the schema's.
    weather: FunctionToolParam = {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER["function"].get("parameters"),
        "strict": True,
    }
    with client(node) as c:
        called = c.responses.create(
            model=MODEL,
            input="What is the weather in Paris?",
            tools=[weather],
            tool_choice={"type": "function", "name": "get_weather"},
            temperature=0,
            max_output_tokens=40,
        )
    assert called.status == "completed", called
    [call] = called.output
    assert call.type == "function_call" and call.name == "get_weather", called
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)


def test_completions_logprobs_and_seeded_sampling(node: NodeProcess) -> None:
    with client(node) as c:
        whole = c.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0
        )
        [choice] = whole.choices
        assert choice.finish_reason == "length" and choice.text.strip()
        assert whole.usage is not None and whole.usage.completion_tokens == 5
        streamed = c.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
        )
        assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == choice.text

        greedy = c.chat.completions.create(
            model=MODEL, messages=ASK, temperature=0, logprobs=True, top_logprobs=3, max_tokens=12
        )
        [answer] = greedy.choices
        assert answer.logprobs is not None and answer.logprobs.content
        entries = answer.logprobs.content
        assert "".join(e.token for e in entries) == answer.message.content
        for entry in entries:
            # Greedy picks the likeliest token: it heads its own alternatives.
            assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
            assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)

        sampled = {
            "model": MODEL,
            "messages": ASK,
            "temperature": 1.0,
            "max_tokens": 24,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.3,
            "extra_body": {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
        }
        first = c.chat.completions.create(**sampled).choices[0].message.content
        again = c.chat.completions.create(**sampled).choices[0].message.content
        assert first == again and first


def test_json_output_and_tool_calls_are_enforced(node: NodeProcess) -> None:
    with client(node) as c:
        # Any JSON object lets a 135M model ramble (a string or a nesting it never
        # closes) until max_tokens; these two prompts, seeded, end within it.
        for prompt, temperature in (
            ("Give me some data.", 0.0),
            ("Describe a cat as a JSON object.", 0.7),
        ):
            reply = c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                response_format={"type": "json_object"},
                temperature=temperature,
                seed=1,
                max_tokens=80,
            )
            assert reply.choices[0].finish_reason == "stop", reply
            assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)

        person = c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a person."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
            },
            temperature=1.0,
            seed=3,
            max_tokens=60,
        )
        assert_person(json.loads(person.choices[0].message.content or ""))

        called = c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[WEATHER],
            tool_choice="required",
            temperature=0,
            max_tokens=40,
        )
        [choice] = called.choices
        assert choice.finish_reason == "tool_calls", choice
        [call] = choice.message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
        assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
