"""Continuous batching on the real bundled model, in this process: replies in a batch are
the replies alone, requests join and leave between steps, the prompt cache serves the
next turn, seeds and constraints hold per request, the KV budget holds prompts back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exo.engine import protocol
from exo.engine.batching import BatchScheduler
from exo.engine.mlx_engine import MlxEngine
from exo.engine.native_decode import NativeDecoder
from exo.engine.native_lanes import native_decoder_for

PROMPTS = (
    "What is the capital of France?",
    "Write a poem about the sea.",
    "Count from one to ten.",
    "Tell me a joke about cats.",
    "Name three colours.",
    "What is two plus two?",
    "Describe a dragon in one sentence.",
    "Why is the sky blue?",
)
# A greedy choice that batching may flip must be a near tie: the two likeliest tokens of
# the reply alone, at the first token where the replies differ, are this close.
NEAR_TIE = 0.05


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[MlxEngine]:
    yield MlxEngine.load(model_dir, 0, 30)


def scheduler(engine: MlxEngine, **options: object) -> BatchScheduler:
    settings: dict[str, object] = {
        "batch_size": 8,
        "prefill_step": 64,
        "kv_budget_tokens": 8192,
        "prompt_cache": False,
    }
    settings.update(options)
    return BatchScheduler(engine, **settings)  # type: ignore[arg-type]


def request(
    request_id: str, text: str | Iterable[protocol.ChatMessage], **params: object
) -> protocol.GenerateRequest:
    messages = (protocol.ChatMessage("user", text),) if isinstance(text, str) else tuple(text)
    sampling = protocol.SamplingParams(**{"temperature": 0.0, **params})  # type: ignore[arg-type]
    return protocol.GenerateRequest(request_id, messages, sampling)


class Collected:
    """Everything a scheduler sent, per request, in the order it was sent."""

    def __init__(self) -> None:
        self.order: list[protocol.TokenOut | protocol.Finished | protocol.RequestError] = []

    def take(self, messages: list[protocol.TokenOut | protocol.Finished | protocol.RequestError]):
        self.order.extend(messages)

    def chunks(self, request_id: str) -> list[protocol.TokenOut]:
        return [
            m for m in self.order if isinstance(m, protocol.TokenOut) and m.request_id == request_id
        ]

    def text(self, request_id: str) -> str:
        return "".join(c.text for c in self.chunks(request_id))

    def finished(self, request_id: str) -> protocol.Finished:
        (done,) = [
            m for m in self.order if isinstance(m, protocol.Finished) and m.request_id == request_id
        ]
        return done

    def position(self, message: object) -> int:
        return next(i for i, m in enumerate(self.order) if m is message)


def drain(batch: BatchScheduler, out: Collected | None = None, steps: int = 5000) -> Collected:
    out = out or Collected()
    for _ in range(steps):
        if not batch.busy:
            return out
        out.take(batch.step())
    raise AssertionError("the scheduler never went idle")


def run_alone(engine: MlxEngine, req: protocol.GenerateRequest) -> Collected:
    batch = scheduler(engine)
    out = Collected()
    out.take(batch.submit(req))
    return drain(batch, out)


def tokens_of(out: Collected, request_id: str) -> list[protocol.TokenLogprob]:
    return [entry for chunk in out.chunks(request_id) for entry in chunk.logprobs]


def assert_same_or_near_tie(alone: Collected, batched: Collected, request_id: str) -> None:
    """Greedy replies agree token for token, or differ first where the reply alone had a
    near tie between its two likeliest tokens (float rounding of batched matmuls)."""
    mine, theirs = tokens_of(alone, request_id), tokens_of(batched, request_id)
    for at, (one, other) in enumerate(zip(mine, theirs, strict=False)):
        if one.text != other.text:
            gap = one.top[0].logprob - one.top[1].logprob
            assert gap < NEAR_TIE, (
                f"{request_id} diverged at token {at} ({one.text!r} alone, {other.text!r} "
                f"batched) although alone it led by {gap:.4f} nats"
            )
            return
    assert alone.text(request_id) == batched.text(request_id)


def test_eight_greedy_replies_in_one_batch_are_the_replies_alone(engine: MlxEngine) -> None:
    requests = [request(f"b{n}", text, max_tokens=24, logprobs=2) for n, text in enumerate(PROMPTS)]
    alone = [run_alone(engine, r) for r in requests]
    batch = scheduler(engine)
    together = Collected()
    for r in requests:
        together.take(batch.submit(r))
    drain(batch, together)
    for r, solo in zip(requests, alone, strict=True):
        assert_same_or_near_tie(solo, together, r.request_id)
        assert (
            together.finished(r.request_id).prompt_tokens
            == solo.finished(r.request_id).prompt_tokens
        )
    # They decoded together: every reply had tokens before the first one finished.
    first_end = min(together.position(together.finished(r.request_id)) for r in requests)
    assert all(together.position(together.chunks(r.request_id)[0]) < first_end for r in requests)


def test_a_request_joins_a_running_batch_between_steps(engine: MlxEngine) -> None:
    batch = scheduler(engine)
    out = Collected()
    out.take(batch.submit(request("early", PROMPTS[1], max_tokens=40, ignore_eos=True)))
    for _ in range(10):
        out.take(batch.step())
    assert len(out.chunks("early")) >= 5
    out.take(batch.submit(request("late", PROMPTS[0], max_tokens=8)))
    drain(batch, out)
    late_first = out.position(out.chunks("late")[0])
    assert late_first < out.position(out.finished("early"))
    # The early stream kept going while the late one was prefilled and decoded.
    assert any(out.position(c) > late_first for c in out.chunks("early"))
    assert run_alone(engine, request("late", PROMPTS[0], max_tokens=8)).text("late") == out.text(
        "late"
    )


def test_cancelling_one_request_leaves_the_others(engine: MlxEngine) -> None:
    batch = scheduler(engine)
    out = Collected()
    for n in range(3):
        out.take(batch.submit(request(f"c{n}", PROMPTS[n], max_tokens=20, ignore_eos=True)))
    out.take(batch.submit(request("queued", PROMPTS[3], max_tokens=4)))
    for _ in range(6):
        out.take(batch.step())
    out.take(batch.cancel("c1"))
    drain(batch, out)
    cancelled = out.finished("c1")
    assert cancelled.finish_reason == "cancelled" and 0 < cancelled.completion_tokens < 20
    for name in ("c0", "c2"):
        assert (out.finished(name).finish_reason, out.finished(name).completion_tokens) == (
            "length",
            20,
        )
    assert out.finished("queued").completion_tokens == 4
    assert batch.cancel("c1") == []  # already over: nothing to say


def test_a_queued_request_cancelled_before_it_starts_ends_with_nothing(
    engine: MlxEngine,
) -> None:
    batch = scheduler(engine, batch_size=1)
    out = Collected()
    out.take(batch.submit(request("first", PROMPTS[0], max_tokens=4)))
    out.take(batch.submit(request("second", PROMPTS[1], max_tokens=4)))
    out.take(batch.step())
    assert (batch.running, batch.waiting) == (1, 1)
    out.take(batch.cancel("second"))
    drain(batch, out)
    second = out.finished("second")
    assert (second.finish_reason, second.prompt_tokens, out.chunks("second")) == (
        "cancelled",
        0,
        [],
    )


def test_a_seeded_reply_is_the_same_alone_and_beside_others(engine: MlxEngine) -> None:
    seeded = request("seeded", PROMPTS[1], temperature=1.0, top_p=0.95, seed=42, max_tokens=16)
    alone = run_alone(engine, seeded).text("seeded")
    batch = scheduler(engine)
    out = Collected()
    out.take(batch.submit(request("noise", PROMPTS[2], temperature=1.0, max_tokens=16)))
    for _ in range(3):
        out.take(batch.step())
    out.take(batch.submit(seeded))
    drain(batch, out)
    assert out.text("seeded") == alone


def test_ignore_eos_generates_exactly_max_tokens(engine: MlxEngine) -> None:
    out = run_alone(engine, request("n", PROMPTS[4], max_tokens=40, ignore_eos=True))
    assert (out.finished("n").finish_reason, out.finished("n").completion_tokens) == ("length", 40)
    ends = run_alone(engine, request("e", PROMPTS[0], max_tokens=40))
    assert ends.finished("e").finish_reason == "stop" and ends.finished("e").completion_tokens < 40


def test_json_schemas_hold_for_their_requests_inside_a_batch(engine: MlxEngine) -> None:
    city = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    number = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["n"],
        "additionalProperties": False,
    }
    batch = scheduler(engine)
    out = Collected()
    out.take(batch.submit(request("free", PROMPTS[1], max_tokens=30)))
    out.take(batch.submit(request("city", PROMPTS[0], max_tokens=40, json_schema=json.dumps(city))))
    out.take(
        batch.submit(request("number", PROMPTS[5], max_tokens=40, json_schema=json.dumps(number)))
    )
    drain(batch, out)
    assert set(json.loads(out.text("city"))) == {"city"}
    assert set(json.loads(out.text("number"))) == {"n"}
    assert out.text("free") and not out.text("free").lstrip().startswith("{")


def test_stop_strings_end_their_request_and_free_its_slot(engine: MlxEngine) -> None:
    full = run_alone(engine, request("s", PROMPTS[0], max_tokens=24)).text("s")
    assert "Paris" in full
    batch = scheduler(engine)
    out = Collected()
    out.take(batch.submit(request("s", PROMPTS[0], max_tokens=24, stop=("Paris",))))
    out.take(batch.submit(request("t", PROMPTS[1], max_tokens=12)))
    drain(batch, out)
    stopped = out.finished("s")
    assert (stopped.finish_reason, stopped.stop_sequence) == ("stop", "Paris")
    assert out.text("s") == full[: full.index("Paris")]
    assert batch.running == 0


@pytest.mark.parametrize("lane", [False, True])  # in the batch generator; in a native lane
def test_the_next_turn_of_a_conversation_reads_its_history_from_the_cache(
    engine: MlxEngine, native: NativeDecoder, lane: bool
) -> None:
    history = "Here is some background. " + " ".join(
        f"Fact {n}: the sky is blue." for n in range(60)
    )
    first_turn = [protocol.ChatMessage("user", history + " What colour is the sky?")]
    batch = scheduler(engine, prompt_cache=True, native=native if lane else None)
    first = Collected()
    first.take(batch.submit(request("t1", first_turn, max_tokens=16)))
    drain(batch, first)
    reply = first.text("t1")
    assert first.finished("t1").cached_tokens == 0 and first.finished("t1").prompt_tokens > 500
    second_turn = [
        *first_turn,
        protocol.ChatMessage("assistant", reply),
        protocol.ChatMessage("user", "And the grass?"),
    ]
    second = Collected()
    second.take(batch.submit(request("t2", second_turn, max_tokens=16, logprobs=2)))
    drain(batch, second)
    done = second.finished("t2")
    # Everything up to the first reply came from the cache; only the new turn was computed.
    assert done.cached_tokens >= first.finished("t1").prompt_tokens
    assert done.prompt_tokens - done.cached_tokens < 40
    assert batch.cache is not None and batch.cache.hits == 1
    fresh = run_alone(engine, request("t2", second_turn, max_tokens=16, logprobs=2))
    assert fresh.finished("t2").cached_tokens == 0
    assert_same_or_near_tie(fresh, second, "t2")


def test_a_prompt_waits_while_the_kv_budget_is_taken(engine: MlxEngine) -> None:
    size = len(engine.encode_chat((protocol.ChatMessage("user", PROMPTS[0]),)))
    batch = scheduler(engine, kv_budget_tokens=size + 20)
    out = Collected()
    out.take(batch.submit(request("a", PROMPTS[0], max_tokens=8, ignore_eos=True)))
    out.take(batch.submit(request("b", PROMPTS[0], max_tokens=8, ignore_eos=True)))
    out.take(batch.step())
    assert (batch.running, batch.waiting) == (1, 1)
    drain(batch, out)
    assert out.position(out.chunks("b")[0]) > out.position(out.finished("a"))
    assert out.text("a") == out.text("b")


def test_a_failing_processor_ends_only_its_request(
    engine: MlxEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(tokens: object, logits: object) -> object:
        raise RuntimeError("boom")

    real = engine.processors

    def processors(prepared):  # type: ignore[no-untyped-def]
        return [broken] if prepared.request_id == "bad" else real(prepared)

    monkeypatch.setattr(engine, "processors", processors)
    batch = scheduler(engine)
    out = Collected()
    out.take(batch.submit(request("bad", PROMPTS[0], max_tokens=8)))
    out.take(batch.submit(request("good", PROMPTS[1], max_tokens=8, ignore_eos=True)))
    drain(batch, out)
    errors = [m for m in out.order if isinstance(m, protocol.RequestError)]
    assert [(e.request_id, e.failed) for e in errors] == [("bad", True)]
    assert "boom" in errors[0].message
    assert out.finished("good").completion_tokens == 8


def test_bad_requests_raise_and_count_only_answers_at_once(engine: MlxEngine) -> None:
    batch = scheduler(engine)
    with pytest.raises(ValueError, match="top_p"):
        batch.submit(request("bad", PROMPTS[0], top_p=0.0))
    with pytest.raises(ValueError, match="context"):
        batch.submit(request("long", "hello " * 9000))
    (counted,) = batch.submit(request("count", PROMPTS[0], max_tokens=0))
    assert isinstance(counted, protocol.Finished) and counted.completion_tokens == 0
    assert not batch.busy


# -- the native lanes: streams on the fused native step ------------------------------------


@pytest.fixture(scope="module")
def native(engine: MlxEngine) -> NativeDecoder:
    decoder = native_decoder_for(engine, 8)
    assert decoder is not None, "the bundled model on a CPU takes the native step"
    return decoder


@pytest.fixture
def rows_fed(native: NativeDecoder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of every native step the test makes."""
    fed: list[int] = []
    step_rows = native.step_rows

    def counted(tokens: list[int], positions: list[int], slots: list[int]) -> Any:
        fed.append(len(tokens))
        return step_rows(tokens, positions, slots)

    monkeypatch.setattr(native, "step_rows", counted)
    return fed


def run_lanes(
    engine: MlxEngine, native: NativeDecoder, *requests: protocol.GenerateRequest
) -> Collected:
    batch = scheduler(engine, native=native)
    out = Collected()
    for req in requests:
        out.take(batch.submit(req))
    return drain(batch, out)


def test_a_lone_stream_on_the_native_step_is_its_batch_reply(
    engine: MlxEngine, native: NativeDecoder, rows_fed: list[int]
) -> None:
    for n, text in enumerate(PROMPTS[:4]):
        req = request(f"s{n}", text, max_tokens=24, logprobs=2)
        lane, batched = run_lanes(engine, native, req), run_alone(engine, req)
        assert_same_or_near_tie(batched, lane, req.request_id)
        assert (
            lane.finished(req.request_id).prompt_tokens
            == batched.finished(req.request_id).prompt_tokens
        )
    assert rows_fed and set(rows_fed) == {1}
    ends = run_lanes(engine, native, request("e", PROMPTS[0], max_tokens=200))
    assert ends.finished("e").finish_reason == "stop"
    full = run_lanes(engine, native, request("n", PROMPTS[4], max_tokens=30, ignore_eos=True))
    assert (full.finished("n").finish_reason, full.finished("n").completion_tokens) == (
        "length",
        30,
    )


def test_eight_streams_decode_together_on_the_native_step_each_as_alone(
    engine: MlxEngine, native: NativeDecoder, rows_fed: list[int]
) -> None:
    requests = [
        request(f"b{n}", text, max_tokens=24, ignore_eos=True, logprobs=2)
        for n, text in enumerate(PROMPTS)
    ]
    together = run_lanes(engine, native, *requests)
    assert max(rows_fed) == 8  # one native call fed all eight
    for r in requests:
        assert_same_or_near_tie(run_alone(engine, r), together, r.request_id)


def test_a_request_with_a_schema_decodes_beside_the_lanes_in_the_batch_generator(
    engine: MlxEngine, native: NativeDecoder, rows_fed: list[int]
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    plain = request("plain", PROMPTS[1], max_tokens=24, ignore_eos=True)
    shaped = request(
        "json", "Give me a number as JSON.", max_tokens=40, json_schema=json.dumps(schema)
    )
    batch = scheduler(engine, native=native, prefill_step=8)
    out = Collected()
    out.take(batch.submit(plain))
    for _ in range(8):
        out.take(batch.step())
    out.take(batch.submit(shaped))
    drain(batch, out)
    assert rows_fed  # the plain one on the native step
    assert isinstance(json.loads(out.text("json"))["n"], int)
    assert out.finished("plain").completion_tokens == 24
    assert_same_or_near_tie(run_alone(engine, plain), out, "plain")


def test_a_lane_cancels_keeps_its_cache_and_stops_at_stop_strings(
    engine: MlxEngine, native: NativeDecoder
) -> None:
    batch = scheduler(engine, native=native, prompt_cache=True)
    out = Collected()
    out.take(batch.submit(request("c", PROMPTS[1], max_tokens=40, ignore_eos=True)))
    out.take(batch.submit(request("d", PROMPTS[2], max_tokens=40, ignore_eos=True)))
    for _ in range(8):
        out.take(batch.step())
    out.take(batch.cancel("c"))
    assert batch.running == 1
    drain(batch, out)
    cancelled = out.finished("c")
    assert cancelled.finish_reason == "cancelled" and 0 < cancelled.completion_tokens < 40
    assert out.finished("d").completion_tokens == 40
    assert batch.cache is not None and len(batch.cache) == 2
    alone = run_lanes(engine, native, request("p", PROMPTS[3], max_tokens=40))
    cut = alone.text("p").split()[2]
    stopped = run_lanes(engine, native, request("p", PROMPTS[3], max_tokens=40, stop=(cut,)))
    assert stopped.finished("p").finish_reason == "stop"
    assert cut not in stopped.text("p")
