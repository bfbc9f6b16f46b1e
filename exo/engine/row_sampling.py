"""Sampling a token from one row of logits in numpy, for streams on the native step.

Why not mlx-lm's sampler: on a CPU each of its calls is a handful of MLX operations over
the whole vocabulary, evaluated one after another: for the bundled model's 49152 tokens,
per row, 1.6 ms greedy, 3.2 ms with a temperature and 11 ms with top-p (a full sort),
against a ~4 ms share of a native step of 8 streams. Here the same chain costs 0.01 to
0.55 ms (`benchmarks/sampling.py`, docs/benchmarks.md): top-p sorts only the few hundred
likeliest tokens that hold the mass, and the draw is one uniform number against the
cumulative probabilities.

What it computes is mlx-lm's `make_sampler` chain: top-p, then min-p, then top-k, each
masking the log-probabilities, then a draw from what is left at the temperature. A
seeded request draws from a generator of its own, so a seed repeats its reply whatever
else the runner decodes meanwhile; the draws are numpy's, not MLX's, so a seed gives
another reply on a path that samples with MLX (a GPU, requests with logits processors).
"""

from __future__ import annotations

import numpy as np

from exo.engine import protocol

# Likeliest tokens top-p looks at first; four times more each time they hold too little.
_FIRST_CANDIDATES = 256


class RowSampler:
    """Samples a request's tokens from rows of logits (numpy float32, one per step)."""

    def __init__(self, params: protocol.SamplingParams) -> None:
        self.params = params
        self._random = np.random.default_rng(None if params.seed is None else params.seed % 2**64)

    def __call__(self, logits: np.ndarray) -> int:
        params = self.params
        if params.temperature == 0:
            return int(logits.argmax())  # the first of equals, as mx.argmax
        logprobs = log_softmax(logits)
        keep = kept(logprobs, params.top_p, params.min_p, params.top_k)
        candidates = np.flatnonzero(keep) if keep is not None else None
        chosen = logprobs if candidates is None else logprobs[candidates]
        weights = np.exp((chosen - chosen.max()) / np.float32(params.temperature))
        cumulative = np.cumsum(weights, dtype=np.float64)
        at = int(np.searchsorted(cumulative, self._random.random() * cumulative[-1], "right"))
        at = min(at, len(cumulative) - 1)
        return int(at if candidates is None else candidates[at])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float32, copy=False) - logits.max()
    return shifted - np.log(np.exp(shifted).sum(dtype=np.float64)).astype(np.float32)


def kept(logprobs: np.ndarray, top_p: float, min_p: float, top_k: int) -> np.ndarray | None:
    """Which tokens the filters leave (None: all of them), as mlx-lm's `apply_top_p`,
    `apply_min_p` and `apply_top_k` applied in that order leave them."""
    keep: np.ndarray | None = None
    if 0 < top_p < 1.0:
        keep = logprobs >= _top_p_threshold(logprobs, top_p)
    if min_p:
        above = logprobs >= logprobs.max() + np.float32(np.log(min_p))
        keep = above if keep is None else keep & above
    if 0 < top_k < logprobs.size:
        masked = logprobs if keep is None else np.where(keep, logprobs, -np.inf)
        top = np.zeros(logprobs.size, dtype=bool)
        top[np.argpartition(-masked, top_k - 1)[:top_k]] = True
        keep = top if keep is None else keep & top
    return keep


def _top_p_threshold(logprobs: np.ndarray, top_p: float) -> np.float32:
    """The smallest log-probability top-p keeps: tokens in descending order are kept while
    the mass of those before them is under `top_p` of the total (ties with the last kept
    one are kept too, as mlx-lm's mask keeps them)."""
    probs = np.exp(logprobs, dtype=np.float32)
    total = probs.sum(dtype=np.float64)
    count = min(_FIRST_CANDIDATES, logprobs.size)
    while True:
        likeliest = np.argpartition(-logprobs, count - 1)[:count] if count < logprobs.size else None
        values = logprobs if likeliest is None else logprobs[likeliest]
        order = np.sort(values)[::-1]
        mass = np.cumsum(np.exp(order), dtype=np.float64)
        if mass[-1] >= top_p * total or likeliest is None:
            before = np.concatenate(([0.0], mass[:-1]))
            return order[int(np.count_nonzero(before < top_p * total)) - 1]
        count = min(count * 4, logprobs.size)
