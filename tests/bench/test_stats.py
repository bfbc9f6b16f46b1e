"""The statistics of `exo bench`: percentiles, per-request metrics, summaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exo.bench.records import RequestResult
from exo.bench.stats import distribution, percentile, request_metrics, summarize


def ok(
    index: int = 0, times: tuple[float, ...] = (0.5, 0.6, 0.8, 0.9), **fields: object
) -> RequestResult:
    values: dict[str, object] = {"prompt_tokens": 100, "completion_tokens": len(times), **fields}
    return RequestResult(index, "ok", 0.0, times[-1] if times else 1.0, times, **values)  # type: ignore[arg-type]


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(v) for v in range(1, 11)], 90) == pytest.approx(9.1)
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 5.0], 0) == 1.0 and percentile([1.0, 5.0], 100) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotone_and_bounded(values: list[float], a: float, b: float) -> None:
    ordered = sorted(values)
    low, high = sorted((a, b))
    assert ordered[0] <= percentile(ordered, low) <= percentile(ordered, high) + 1e-6
    assert percentile(ordered, high) <= ordered[-1]


def test_distribution_skips_unknown_values() -> None:
    assert distribution([]) is None and distribution([None]) is None
    dist = distribution([3.0, None, 1.0, 2.0])
    assert dist is not None
    assert (dist.count, dist.min, dist.p50, dist.max, dist.mean) == (3, 1.0, 2.0, 3.0, 2.0)


def test_request_metrics() -> None:
    metrics = request_metrics(ok(times=(0.5, 0.6, 0.8, 0.9)))
    assert metrics.ttft == 0.5
    assert metrics.inter_token == pytest.approx(0.4 / 3)
    assert metrics.max_gap == pytest.approx(0.2)
    assert metrics.prefill_tps == pytest.approx(200.0)
    assert metrics.decode_tps == pytest.approx(3 / 0.4)
    assert metrics.latency == 0.9


def test_request_metrics_count_tokens_from_usage_not_chunks() -> None:
    # Five tokens in three chunks (a chunk may carry several, or none for split UTF-8).
    metrics = request_metrics(ok(times=(1.0, 1.5, 2.0), completion_tokens=5))
    assert metrics.decode_tps == pytest.approx(4 / 1.0)
    assert metrics.inter_token == pytest.approx(0.25)
    assert metrics.max_gap == pytest.approx(0.5)


def test_request_metrics_without_a_decode_interval() -> None:
    single = request_metrics(ok(times=(0.3,)))
    assert single.ttft == 0.3 and single.prefill_tps == pytest.approx(100 / 0.3)
    assert (single.inter_token, single.max_gap, single.decode_tps) == (None, None, None)
    empty = request_metrics(ok(times=(), completion_tokens=0))
    assert (empty.ttft, empty.prefill_tps, empty.decode_tps) == (None, None, None)


def test_summary_counts_outcomes_and_aggregates_over_the_wall_time() -> None:
    results = [
        ok(0, (0.5, 1.0, 1.5), prompt_tokens=16, cached_tokens=4),
        ok(1, (0.7, 1.1), prompt_tokens=17),
        RequestResult(2, "rejected", 0.1, 0.01, http_status=429, retry_after=1.0),
        RequestResult(3, "failed", 0.2, 0.5, error="boom"),
    ]
    summary = summarize(results, wall_s=2.5)
    assert (summary.requests, summary.ok, summary.rejected, summary.failed) == (4, 2, 1, 1)
    assert summary.completion_tokens == 5 and summary.prompt_tokens == 33
    assert summary.aggregate_tps == pytest.approx(5 / 2.5)
    assert summary.requests_per_s == pytest.approx(2 / 2.5)
    assert summary.prompt_range == (16, 17) and summary.completion_range == (2, 3)
    assert summary.cached_tokens == 4
    assert summary.ttft is not None and summary.ttft.p50 == pytest.approx(0.6)
    assert summary.max_gap is not None and summary.max_gap.max == pytest.approx(0.5)


def test_summary_of_nothing_measured() -> None:
    summary = summarize([RequestResult(0, "failed", 0.0, 0.1, error="x")], wall_s=0.1)
    assert summary.ok == 0 and summary.aggregate_tps is None and summary.ttft is None
