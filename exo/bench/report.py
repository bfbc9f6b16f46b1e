"""What `exo bench` hands back: a table for people and a JSON document for tools.

The JSON keeps every request's raw measurements (chunk arrival times included) beside
the summary, so a figure can be recomputed, or another statistic taken, without
measuring again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import asdict

from exo.bench.records import Config
from exo.bench.stats import Distribution, request_metrics
from exo.bench.sweep import ConfigResult

FORMAT_VERSION = 1


def _config_json(config: Config) -> dict[str, Any]:
    return {
        "strategy": config.placement.strategy,
        "nodes": config.placement.nodes,
        "prompt_tokens": config.prompt_tokens,
        "gen_tokens": config.gen_tokens,
        "concurrency": config.concurrency,
        "requests": config.requests,
    }


def result_json(result: ConfigResult) -> dict[str, Any]:
    requests = []
    for request in result.requests:
        entry = asdict(request)
        if request.outcome == "ok":
            entry["metrics"] = asdict(request_metrics(request))
        requests.append(entry)
    return {
        "config": _config_json(result.config),
        "instance": result.instance,
        "error": result.error,
        "summary": asdict(result.summary) if result.summary is not None else None,
        "warmup": asdict(result.warmup) if result.warmup is not None else None,
        "requests": requests,
    }


def document(run: dict[str, Any], results: Sequence[ConfigResult]) -> dict[str, Any]:
    """The whole run: `run` says what was measured (url, model, endpoint, times)."""
    return {
        "format": f"exo-bench/{FORMAT_VERSION}",
        **run,
        "configurations": [result_json(r) for r in results],
    }


def _ms(value: float) -> str:
    ms = value * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def _spread_ms(dist: Distribution | None) -> str:
    return "-" if dist is None else "/".join(_ms(v) for v in (dist.p50, dist.p90, dist.p99))


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _span(asked: int, measured: tuple[int, int] | None, what: str) -> str | None:
    if measured is None or measured == (asked, asked):
        return None
    low, high = measured
    got = str(low) if low == high else f"{low}-{high}"
    return f"{what} {got} of {asked}"


def notes(result: ConfigResult) -> str:
    """Where a configuration did not measure what it asked for, and what went wrong."""
    if result.error is not None:
        return result.error
    summary = result.summary
    assert summary is not None
    config = result.config
    found = [
        _span(config.prompt_tokens, summary.prompt_range, "prompt"),
        _span(config.gen_tokens, summary.completion_range, "gen"),
        f"{summary.cached_tokens} prompt tokens cached" if summary.cached_tokens else None,
        f"{summary.rejected} rejected (429)" if summary.rejected else None,
    ]
    if summary.failed:
        first = next(r.error for r in result.requests if r.outcome == "failed")
        found.append(f"{summary.failed} failed: {first}")
    if summary.ok == 0:
        found.append("nothing measured")
    return "; ".join(n for n in found if n)


HEADERS = (
    "placement",
    "prompt",
    "gen",
    "conc",
    "ok",
    "rej",
    "fail",
    "TTFT ms p50/90/99",
    "ITL ms p50/90/99",
    "max gap ms",
    "prefill tok/s",
    "decode tok/s",
    "agg tok/s",
    "notes",
)


def _row(result: ConfigResult) -> list[str]:
    config, summary = result.config, result.summary
    head = [
        config.placement.label(),
        str(config.prompt_tokens),
        str(config.gen_tokens),
        str(config.concurrency),
    ]
    if summary is None:
        return [*head, "-", "-", "-", "-", "-", "-", "-", "-", "-", notes(result)]
    return [
        *head,
        str(summary.ok),
        str(summary.rejected),
        str(summary.failed),
        _spread_ms(summary.ttft),
        _spread_ms(summary.inter_token),
        "-" if summary.max_gap is None else _ms(summary.max_gap.max),
        _rate(summary.prefill_tps.p50 if summary.prefill_tps else None),
        _rate(summary.decode_tps.p50 if summary.decode_tps else None),
        _rate(summary.aggregate_tps),
        notes(result),
    ]


def table(results: Sequence[ConfigResult]) -> str:
    """One row per configuration, columns aligned; the legend says what each figure is."""
    rows = [list(HEADERS), *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS) - 1)]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    legend = (
        "TTFT: request sent to first text; ITL: mean time between tokens after the first, "
        "per request; max gap: the longest wait between two chunks of any request; "
        "prefill tok/s (prompt / TTFT) and decode tok/s ((tokens - 1) / decode time): "
        "per-request medians; agg tok/s: generated tokens / wall time of the level."
    )
    return "\n".join([*lines, "", legend])


def measured_anything(results: Sequence[ConfigResult]) -> bool:
    return any(r.summary is not None and r.summary.ok > 0 for r in results)
