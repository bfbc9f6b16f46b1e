"""Many users of one real node at once, through the official clients: requests decode in
one batch, a full instance answers 429 with Retry-After in every dialect, and the next
turn of a conversation reports the prompt tokens it read from the prompt cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.nodes import NodeProcess
from tests.integration.streams import MODEL, client

pytestmark = pytest.mark.slow

BATCH, QUEUE = 2, 1
FACTS = " ".join(f"Fact {n}: the sea is deep and blue." for n in range(50))


def history(dialect: str) -> str:
    """A long first message, different from its first token on for each dialect: a
    shared prefix would be read from the cache by the first turn of the next one."""
    return f"{dialect} background for our talk. {FACTS}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[NodeProcess]:
    process = NodeProcess(
        tmp_path_factory.mktemp("serving") / "home",
        models_dir,
        "--batch-size",
        str(BATCH),
        "--queue-limit",
        str(QUEUE),
    )
    process.start()
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0, process.log_text()[-4000:]


class Stream:
    """One streamed chat on a thread: when its tokens arrived, and how it ended."""

    def __init__(self, node: NodeProcess, prompt: str, max_tokens: int) -> None:
        self.times: list[float] = []
        self.text = ""
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self._args = (node, prompt, max_tokens)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        node, prompt, max_tokens = self._args
        try:
            with client(node, timeout=120) as c:
                stream = c.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=0,
                    max_tokens=max_tokens,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                with stream:
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            self.text += chunk.choices[0].delta.content
                            self.times.append(time.monotonic())
                        if self.stop.is_set():
                            break
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self.thread.join(180)
        assert not self.thread.is_alive(), "the stream hung"


def test_streams_of_one_batch_emit_tokens_side_by_side(node: NodeProcess) -> None:
    streams = [Stream(node, f"Write a story about the number {n}.", 48) for n in range(BATCH)]
    for stream in streams:
        stream.join()
        assert stream.error is None, stream.error
        assert len(stream.times) >= 40
    # Decoded together: each stream had tokens arriving before the other one ended.
    for one, other in (streams, streams[::-1]):
        assert one.times[0] < other.times[-1]
        assert sum(one.times[0] < t < one.times[-1] for t in other.times) > 10


def test_a_full_instance_answers_429_with_retry_after_in_every_dialect(
    node: NodeProcess,
) -> None:
    busy = [Stream(node, f"Count to {n * 100}.", 400) for n in range(BATCH + QUEUE)]
    try:
        # Whichever arrived first decode; the last one waits in the queue.
        deadline = time.monotonic() + 120
        while sum(bool(s.times) for s in busy) < BATCH and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [s.error for s in busy] == [None] * len(busy)
        assert sum(bool(s.times) for s in busy) == BATCH

        with client(node) as c, pytest.raises(openai.RateLimitError) as refused:
            c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.code == "rate_limit_exceeded"

        with client(node) as c, pytest.raises(openai.RateLimitError):  # streamed: no 200 first
            c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=4,
                stream=True,
            )

        with (
            anthropic.Anthropic(base_url=node.url, api_key="x", max_retries=0) as claude,
            pytest.raises(anthropic.RateLimitError) as limited,
        ):
            claude.messages.create(
                model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}]
            )
        assert limited.value.response.headers["retry-after"]
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]

        with ollama.Client(host=node.url) as llama, pytest.raises(ollama.ResponseError) as answered:
            llama.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
        assert answered.value.status_code == 429

        raw = httpx.post(
            node.url + "/v1/completions",
            json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
            timeout=30,
        )
        assert raw.status_code == 429 and int(raw.headers["Retry-After"]) >= 1
    finally:
        for stream in busy:
            stream.stop.set()
        for stream in busy:
            stream.join()
    # Freed: the next request is served.
    with client(node) as c:
        reply = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_the_next_turn_reports_the_tokens_it_read_from_the_prompt_cache(
    node: NodeProcess,
) -> None:
    first: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": history("OpenAI") + " What colour is the sea?"}
    ]
    with client(node) as c:
        one = c.chat.completions.create(model=MODEL, messages=first, temperature=0, max_tokens=12)
        assert one.usage is not None
        answer = one.choices[0].message.content or ""
        turn: list[ChatCompletionMessageParam] = [
            *first,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And the sky?"},
        ]
        two = c.chat.completions.create(model=MODEL, messages=turn, temperature=0, max_tokens=12)
    assert two.usage is not None and two.usage.prompt_tokens_details is not None
    cached = two.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= one.usage.prompt_tokens > 400
    assert two.usage.prompt_tokens - cached < 40

    messages: Any = [
        {"role": "user", "content": history("Anthropic") + " What is deep?"},
    ]
    with anthropic.Anthropic(base_url=node.url, api_key="x", max_retries=0) as claude:
        said = claude.messages.create(model=MODEL, max_tokens=12, messages=messages)
        text = "".join(b.text for b in said.content if b.type == "text")
        again = claude.messages.create(
            model=MODEL,
            max_tokens=12,
            messages=[
                *messages,
                {"role": "assistant", "content": text},
                {"role": "user", "content": "Why?"},
            ],
        )
    # A first turn shares at most the chat template's preamble with earlier requests.
    first_read = said.usage.cache_read_input_tokens or 0
    assert first_read < 40 and said.usage.input_tokens > 400
    assert (again.usage.cache_read_input_tokens or 0) >= said.usage.input_tokens + first_read
    assert again.usage.input_tokens < 40

    asked = [{"role": "user", "content": history("Ollama") + " Is the sea blue?"}]
    greedy = {"temperature": 0, "num_predict": 8}
    with ollama.Client(host=node.url) as chat:
        reply = chat.chat(model=MODEL, messages=asked, options=greedy)
        follow = chat.chat(
            model=MODEL,
            messages=[*asked, reply.message, {"role": "user", "content": "Sure?"}],
            options=greedy,
        )
    # Ollama counts the prompt tokens it evaluated: the new turn only.
    assert reply.prompt_eval_count is not None and reply.prompt_eval_count > 400
    assert follow.prompt_eval_count is not None and follow.prompt_eval_count < 40
