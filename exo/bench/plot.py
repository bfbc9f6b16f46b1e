"""The PNG of `exo bench --plot`: how throughput and latency move with concurrency, one
line per placement, prompt length and generation length, readable at a glance.

matplotlib is imported here only, with the Agg backend (no display needed), so the
other commands never pay for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from exo.bench.stats import Summary
from exo.bench.sweep import ConfigResult

Series = dict[tuple[str, int, int], list[tuple[int, Summary]]]


def series(results: Sequence[ConfigResult]) -> Series:
    """Measured points grouped into lines: (placement, prompt, gen) -> [(concurrency, summary)]."""
    lines: Series = {}
    for result in results:
        if result.summary is None or result.summary.ok == 0:
            continue
        config = result.config
        key = (config.placement.label(), config.prompt_tokens, config.gen_tokens)
        lines.setdefault(key, []).append((config.concurrency, result.summary))
    return {key: sorted(points, key=lambda p: p[0]) for key, points in lines.items()}


PANELS: list[tuple[str, Callable[[Summary], float | None]]] = [
    ("aggregate decode tok/s", lambda s: s.aggregate_tps),
    ("TTFT p50 (ms)", lambda s: s.ttft.p50 * 1000 if s.ttft else None),
    ("per-request decode tok/s p50", lambda s: s.decode_tps.p50 if s.decode_tps else None),
    ("inter-token latency p99 (ms)", lambda s: s.inter_token.p99 * 1000 if s.inter_token else None),
]


def write_plot(results: Sequence[ConfigResult], path: Path, title: str) -> bool:
    """Draw the panels into `path` (PNG); False when nothing was measured to draw."""
    lines = series(results)
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concurrencies = sorted({c for points in lines.values() for c, _ in points})
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    for axis, (label, value) in zip(axes.flat, PANELS, strict=True):
        for (placement, prompt, gen), points in lines.items():
            xs = [c for c, s in points if value(s) is not None]
            ys = [value(s) for _, s in points if value(s) is not None]
            axis.plot(xs, ys, marker="o", label=f"{placement}, prompt {prompt}, gen {gen}")
        if concurrencies[-1] >= 4 * concurrencies[0]:
            axis.set_xscale("log", base=2)
        axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axis.set_xlabel("concurrent requests")
        axis.set_title(label)
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return True
