"""The cost of sampling one token from one row of logits on this machine: mlx-lm's
sampler, as exo builds it for the batch generator (`exo.engine.sampling.sampler_for`),
against the numpy sampler of the native lanes (`exo.engine.row_sampling.RowSampler`),
for each kind of sampling control, over the bundled model's 49152-token vocabulary.

Rows are drawn long-tailed (a few likely tokens over a wide low floor, as a model's
are); each figure is the median over `--reps` of the mean of 8 rows x 10 rounds.

    .venv/bin/python benchmarks/sampling.py [--reps 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlx.core as mx
import numpy as np

from exo.engine import protocol
from exo.engine.row_sampling import RowSampler
from exo.engine.sampling import sampler_for

VOCAB = 49152
KINDS: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    "temperature 0.7": {"temperature": 0.7},
    "top-p 0.9": {"temperature": 0.7, "top_p": 0.9},
    "top-k 40": {"temperature": 0.7, "top_k": 40},
    "min-p 0.05": {"temperature": 0.7, "min_p": 0.05},
}


def rows(count: int) -> list[np.ndarray]:
    random = np.random.default_rng(0)
    out = []
    for _ in range(count):
        row = random.normal(0.0, 2.0, VOCAB).astype(np.float32)
        row[random.choice(VOCAB, 40, replace=False)] += random.uniform(4, 12, 40).astype(np.float32)
        out.append(row)
    return out


def per_row_ms(sample: Callable[[np.ndarray], int], batch: list[np.ndarray]) -> float:
    sample(batch[0])  # warm-up (MLX compiles its filters on first use)
    start = time.perf_counter()
    for _ in range(10):
        for row in batch:
            sample(row)
    return (time.perf_counter() - start) / (10 * len(batch)) * 1e3


def mlx_lm(params: protocol.SamplingParams) -> Callable[[np.ndarray], int]:
    """What a lane did before: the row to MLX, its log-softmax, the request's sampler."""
    sampler = sampler_for(params)

    def sample(row: np.ndarray) -> int:
        logits = mx.array(row)
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        return int(np.array(sampler(logprobs[None]))[0])

    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description="per-row sampling cost (module docstring)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    batch = rows(8)
    report: dict[str, dict[str, float]] = {}
    for name, controls in KINDS.items():
        params = protocol.SamplingParams(**controls)
        theirs, ours = [], []
        for _ in range(args.reps):  # alternate, so machine noise hits both
            theirs.append(per_row_ms(mlx_lm(params), batch))
            ours.append(per_row_ms(RowSampler(params), batch))
        report[name] = {"mlx_lm_ms": statistics.median(theirs), "numpy_ms": statistics.median(ours)}
        figures = report[name]
        print(
            f"{name:16} mlx-lm {figures['mlx_lm_ms']:6.2f} ms a row, numpy "
            f"{figures['numpy_ms']:6.3f} ms ({figures['mlx_lm_ms'] / figures['numpy_ms']:.0f}x)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
