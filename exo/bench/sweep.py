"""The sweep: every combination of placement, prompt length, generation length and
concurrency, each placed if asked, warmed up by one uncounted request, then run as a
closed loop of `concurrency` streams that share its requests.

A stream sends its next request as soon as its last one ends; after a 429 it first waits
the Retry-After the node gave (at most `MAX_RETRY_WAIT_S`), as a polite client would, so
a level that overloads the node reports rejections rather than a storm of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import trio
from attrs import evolve, frozen

from exo.bench.client import make_counter, stream_request
from exo.bench.placement import PlacementError, place
from exo.bench.prompts import PromptSizeError, PromptSizer
from exo.bench.records import Config, Endpoint, Placement, RequestResult
from exo.bench.stats import Summary, summarize

# Requests per configuration when not given: this many per concurrent stream.
REQUESTS_PER_STREAM = 4
MAX_RETRY_WAIT_S = 10.0


@frozen
class ConfigResult:
    """A configuration's requests and summary, or why it could not run."""

    config: Config
    requests: tuple[RequestResult, ...] = ()
    summary: Summary | None = None
    warmup: RequestResult | None = None
    instance: dict[str, Any] | None = None
    error: str | None = None


def plan(
    placements: Sequence[Placement],
    prompt_tokens: Sequence[int],
    gen_tokens: Sequence[int],
    concurrency: Sequence[int],
    requests: int | None = None,
) -> list[Config]:
    """The cartesian product, placements outermost (placing is the slow step) and
    concurrency innermost, so one placement and one prompt length run together."""
    return [
        Config(p, n, g, c, requests if requests is not None else REQUESTS_PER_STREAM * c)
        for p, n, g, c in itertools.product(placements, prompt_tokens, gen_tokens, concurrency)
    ]


async def run_level(
    send: Callable[[int], Awaitable[RequestResult]], requests: int, concurrency: int
) -> tuple[list[RequestResult], float]:
    """`requests` requests over `concurrency` streams; the results (times from the level's
    start, in index order) and the level's wall time."""
    indices = iter(range(requests))
    results: list[RequestResult] = []
    begun = trio.current_time()

    async def stream() -> None:
        for index in indices:  # shared: each stream takes the next index
            result = await send(index)
            results.append(evolve(result, start=result.start - begun))
            if result.outcome == "rejected" and result.retry_after:
                await trio.sleep(min(result.retry_after, MAX_RETRY_WAIT_S))

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, requests)):
            nursery.start_soon(stream)
    return sorted(results, key=lambda r: r.index), trio.current_time() - begun


@frozen
class Hooks:
    """What the sweep reports as it goes (the CLI's progress bar and notes)."""

    config_started: Callable[[Config], object] = lambda _config: None
    request_done: Callable[[RequestResult], object] = lambda _result: None
    config_skipped: Callable[[ConfigResult], object] = lambda _result: None
    note: Callable[[str], object] = lambda _text: None


async def run_sweep(
    http: httpx.AsyncClient,
    model: str,
    endpoint: Endpoint,
    configs: Sequence[Config],
    ready_timeout: float,
    hooks: Hooks = Hooks(),
) -> list[ConfigResult]:
    """Run every configuration in order. Per-configuration problems (a placement that
    cannot fit, a prompt length that cannot be made) are recorded and the sweep goes on;
    a `BenchError` (node unreachable, model unknown) stops it."""
    sizer = PromptSizer(make_counter(http, endpoint, model))
    done: list[ConfigResult] = []
    placed: Placement | None = None
    instance: dict[str, Any] | None = None
    placement_error: str | None = None
    for config in configs:
        hooks.config_started(config)
        if config.placement.strategy is not None and config.placement != placed:
            placed, instance, placement_error = config.placement, None, None
            hooks.note(f"placing {model} ({config.placement.label()})")
            try:
                instance = await place(http, model, config.placement, ready_timeout)
            except PlacementError as error:
                placement_error = f"placement failed: {error}"
                hooks.note(placement_error)
        if config.placement.strategy is not None and placement_error is not None:
            done.append(ConfigResult(config, error=placement_error))
            hooks.config_skipped(done[-1])
            continue
        try:
            prompts = [await sizer.prompt(config.prompt_tokens) for _ in range(config.requests + 1)]
        except PromptSizeError as error:
            done.append(ConfigResult(config, instance=instance, error=str(error)))
            hooks.note(str(error))
            hooks.config_skipped(done[-1])
            continue
        warmup = await stream_request(http, endpoint, model, prompts[0], config.gen_tokens, -1)
        warmup = evolve(warmup, start=0.0)  # its own level of one
        if warmup.outcome != "ok":
            hooks.note(f"warm-up request {warmup.outcome}: {warmup.error}")

        async def send(
            index: int, config: Config = config, prompts: list[str] = prompts
        ) -> RequestResult:
            result = await stream_request(
                http, endpoint, model, prompts[index + 1], config.gen_tokens, index
            )
            hooks.request_done(result)
            return result

        results, wall = await run_level(send, config.requests, config.concurrency)
        done.append(
            ConfigResult(
                config, tuple(results), summarize(results, wall), warmup, instance=instance
            )
        )
    return done
