"""Per-request metrics and a configuration's summary: pure functions over measurements.

The definitions follow `docs/benchmarks.md` so that `exo bench` figures compare with the
older scripts': TTFT from sending the request to the first chunk with text; decode tok/s
= (completion tokens - 1) / (last chunk - first chunk), the first token being prefill's;
prefill tok/s = prompt tokens / TTFT (it includes the HTTP round trip and any queueing,
which is what a client sees).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from attrs import frozen

from exo.bench.records import RequestResult


@frozen
class Distribution:
    """Order statistics of one metric over a configuration's requests."""

    count: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float


@frozen
class RequestMetrics:
    """What one successful request measured; None where it cannot be told (no text came
    back, or a single token leaves no decode interval)."""

    ttft: float | None
    inter_token: float | None  # mean seconds between tokens after the first
    max_gap: float | None  # the longest wait between two chunks of text
    prefill_tps: float | None
    decode_tps: float | None
    latency: float


@frozen
class Summary:
    """A configuration: counts, the level's aggregate throughput and each metric's spread.

    `aggregate_tps` is total generated tokens / wall time of the level (first request sent
    to last one ended), the throughput the node sustained at that concurrency."""

    requests: int
    ok: int
    rejected: int
    failed: int
    wall_s: float
    prompt_tokens: int
    completion_tokens: int
    aggregate_tps: float | None
    requests_per_s: float | None
    ttft: Distribution | None
    inter_token: Distribution | None
    max_gap: Distribution | None
    prefill_tps: Distribution | None
    decode_tps: Distribution | None
    latency: Distribution | None
    # Measured lengths (min, max) over ok requests, to show where they differ from the ask.
    prompt_range: tuple[int, int] | None
    completion_range: tuple[int, int] | None
    cached_tokens: int


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, interpolated linearly between the
    closest ranks (numpy's default), so p50 of two values is their mean."""
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within [0, 100]")
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: Sequence[float | None]) -> Distribution | None:
    """The spread of the values that are known; None when none is."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    return Distribution(
        count=len(known),
        mean=math.fsum(known) / len(known),
        min=known[0],
        p50=percentile(known, 50),
        p90=percentile(known, 90),
        p99=percentile(known, 99),
        max=known[-1],
    )


def _ratio(numerator: float, seconds: float) -> float | None:
    return numerator / seconds if seconds > 0 else None


def request_metrics(result: RequestResult) -> RequestMetrics:
    """The derived figures of one ok request (see the module docstring)."""
    times = result.chunk_times
    ttft = times[0] if times else None
    tokens = result.completion_tokens if result.completion_tokens is not None else len(times)
    decode_span = times[-1] - times[0] if len(times) >= 2 else 0.0
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    decoded = tokens - 1
    return RequestMetrics(
        ttft=ttft,
        inter_token=decode_span / decoded if decoded > 0 and decode_span > 0 else None,
        max_gap=max(gaps) if gaps else None,
        prefill_tps=(
            _ratio(result.prompt_tokens, ttft)
            if ttft is not None and result.prompt_tokens is not None
            else None
        ),
        decode_tps=_ratio(decoded, decode_span) if decoded > 0 else None,
        latency=result.latency,
    )


def _range(values: Sequence[int | None]) -> tuple[int, int] | None:
    known = [v for v in values if v is not None]
    return (min(known), max(known)) if known else None


def summarize(results: Sequence[RequestResult], wall_s: float) -> Summary:
    """A configuration's summary from its measured requests and the level's wall time."""
    ok = [r for r in results if r.outcome == "ok"]
    metrics = [request_metrics(r) for r in ok]
    completion = sum(r.completion_tokens or len(r.chunk_times) for r in ok)
    return Summary(
        requests=len(results),
        ok=len(ok),
        rejected=sum(r.outcome == "rejected" for r in results),
        failed=sum(r.outcome == "failed" for r in results),
        wall_s=wall_s,
        prompt_tokens=sum(r.prompt_tokens or 0 for r in ok),
        completion_tokens=completion,
        aggregate_tps=_ratio(completion, wall_s) if ok else None,
        requests_per_s=_ratio(len(ok), wall_s) if ok else None,
        ttft=distribution([m.ttft for m in metrics]),
        inter_token=distribution([m.inter_token for m in metrics]),
        max_gap=distribution([m.max_gap for m in metrics]),
        prefill_tps=distribution([m.prefill_tps for m in metrics]),
        decode_tps=distribution([m.decode_tps for m in metrics]),
        latency=distribution([m.latency for m in metrics]),
        prompt_range=_range([r.prompt_tokens for r in ok]),
        completion_range=_range([r.completion_tokens for r in ok]),
        cached_tokens=sum(r.cached_tokens or 0 for r in ok),
    )
