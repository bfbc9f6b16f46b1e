"""The sweep: its plan, the closed loop of a level, placement and a whole run against a
scripted node."""

from __future__ import annotations

import pytest
import trio

from exo.bench.records import Config, Placement, RequestResult
from exo.bench.sweep import Hooks, plan, run_level, run_sweep

from .fakes import MODEL, FakeNode, bpe_like


def test_plan_is_the_product_placements_outermost() -> None:
    pipeline, tensor = Placement("pipeline", 2), Placement("tensor", 2)
    configs = plan([pipeline, tensor], [16, 128], [8], [1, 4])
    assert len(configs) == 8
    assert configs[0] == Config(pipeline, 16, 8, 1, 4)
    assert configs[1] == Config(pipeline, 16, 8, 4, 16)  # 4 requests per stream by default
    assert [c.placement for c in configs] == [pipeline] * 4 + [tensor] * 4
    assert {c.requests for c in plan([Placement()], [16], [8], [1, 4], requests=3)} == {3}


async def test_a_level_keeps_its_concurrency_and_sends_each_request_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    in_flight, most, sent = 0, 0, []

    async def send(index: int) -> RequestResult:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        start = trio.current_time()
        await trio.sleep(1 + index % 3)
        in_flight -= 1
        sent.append(index)
        return RequestResult(index, "ok", start, trio.current_time() - start, (0.5,))

    with trio.fail_after(100):
        results, wall = await run_level(send, requests=10, concurrency=3)
    assert most == 3 and sorted(sent) == list(range(10))
    assert [r.index for r in results] == list(range(10))
    assert results[0].start == 0  # times from the level's start
    assert 0 < wall < 10


async def test_a_rejected_stream_waits_retry_after(autojump_clock: trio.abc.Clock) -> None:
    async def send(index: int) -> RequestResult:
        return RequestResult(index, "rejected", trio.current_time(), 0.0, retry_after=3.0)

    with trio.fail_after(100):
        results, wall = await run_level(send, requests=2, concurrency=1)
    assert [r.start for r in results] == [0.0, 3.0]
    assert wall == pytest.approx(6.0)


async def test_a_whole_sweep_with_placements() -> None:
    node = FakeNode(workers=2)
    node.add_instance("inst-old", "pipeline", 1, "ready")  # must not serve the measurements
    notes: list[str] = []
    done: list[RequestResult] = []
    placements = [Placement("pipeline", 2), Placement("tensor", 2), Placement("pipeline", 3)]
    configs = plan(placements, [16, 40], [3], [1, 2])
    hooks = Hooks(request_done=done.append, note=notes.append)
    with trio.fail_after(30):
        async with node.client() as http:
            results = await run_sweep(http, MODEL, "completions", configs, 10.0, hooks)
    placed = results[:4]
    assert all(r.error is None and r.summary is not None for r in placed)
    assert node.placed == [
        {"model": MODEL, "strategy": "pipeline", "nodes": ["node-0", "node-1"], "min_nodes": 2}
    ]
    # The old instance goes before placing; the placed one before trying tensor (an
    # invalid layout may be one that does not fit beside it).
    assert node.deleted == ["inst-old", "inst-1"]
    assert placed[0].instance is not None and placed[0].instance["id"] == "inst-1"
    # Tensor is invalid here, and 3 nodes are more than the cluster has: recorded.
    assert {r.error for r in results[4:8]} == {"placement failed: tensor x2: 9 heads do not divide"}
    assert results[8].error == "placement failed: pipeline x3: the cluster has 2 worker node(s)"
    assert any("9 heads" in n for n in notes)
    # Every prompt exact and distinct (warm-ups included), every request measured.
    assert len(done) == sum(c.requests for c in configs[:4])
    assert len(node.prompts) == len(set(node.prompts)) == len(done) + 4
    for result in placed:
        summary = result.summary
        assert summary is not None and summary.ok == result.config.requests
        assert summary.prompt_range == (result.config.prompt_tokens,) * 2
        assert summary.completion_range == (3, 3)
        assert result.warmup is not None and result.warmup.outcome == "ok"
    assert {bpe_like(p) for p in node.prompts} == {16, 40}


async def test_rejections_are_counted() -> None:
    node = FakeNode()
    node.reject_next = 1 + 2  # the warm-up, then two measured requests
    configs = plan([Placement()], [16], [2], [1], requests=4)
    with trio.fail_after(30):
        async with node.client() as http:
            [result] = await run_sweep(http, MODEL, "completions", configs, 10.0)
    assert result.warmup is not None and result.warmup.outcome == "rejected"
    assert result.summary is not None
    assert (result.summary.ok, result.summary.rejected) == (2, 2)
