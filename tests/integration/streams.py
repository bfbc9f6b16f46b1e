"""The official `openai` client against a real node, and a long greedy stream consumed on a
thread so that a test can kill something mid-stream and time how the stream ends."""

from __future__ import annotations

import threading
import time

import openai

from tests.integration.nodes import NodeProcess

MODEL = "smollm2-135m"


def client(node: NodeProcess, timeout: float = 300) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=node.url + "/v1", api_key=node.api_key or "unused", timeout=timeout, max_retries=0
    )


class LongStream:
    """Streams "count to 500" from `node`; `outcome` is None on a clean end, else the error."""

    def __init__(self, node: NodeProcess, tokens_before_ready: int = 1) -> None:
        self.received: list[str] = []
        self.started = threading.Event()
        self.outcome: list[BaseException | None] = []
        self._node = node
        self._wanted = tokens_before_ready
        self._thread = threading.Thread(target=self._consume)
        self._thread.start()

    def _consume(self) -> None:
        try:
            with (
                client(self._node, timeout=60) as c,
                c.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Count from 1 to 500, one per line."}],
                    temperature=0,
                    max_tokens=2000,
                    stream=True,
                ) as stream,
            ):
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        self.received.append(chunk.choices[0].delta.content)
                    if len(self.received) >= self._wanted:
                        self.started.set()
            self.outcome.append(None)
        except BaseException as exc:
            self.outcome.append(exc)

    def ended_within(self, seconds: float) -> float:
        """Wait for the stream to end; how long it took (fails past `seconds` + 5)."""
        since = time.monotonic()
        self._thread.join(seconds + 5)
        assert not self._thread.is_alive(), "the stream hung"
        return time.monotonic() - since
