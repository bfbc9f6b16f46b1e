"""The numpy row sampler of the native lanes keeps exactly the tokens mlx-lm's filters
keep, draws in proportion to the tempered probabilities, and repeats a seed."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from exo.engine import protocol
from exo.engine.row_sampling import RowSampler, kept, log_softmax

VOCAB = 49152


def logits_like_a_model(seed: int) -> np.ndarray:
    """A long-tailed row: a few likely tokens over a wide low floor, as a model's are."""
    random = np.random.default_rng(seed)
    row = random.normal(0.0, 2.0, VOCAB).astype(np.float32)
    row[random.choice(VOCAB, 40, replace=False)] += random.uniform(4, 12, 40).astype(np.float32)
    return row


def mlx_kept(logprobs: np.ndarray, top_p: float, min_p: float, top_k: int) -> np.ndarray:
    masked = mx.array(logprobs)[None]
    if 0 < top_p < 1.0:
        masked = apply_top_p(masked, top_p)
    if min_p:
        masked = apply_min_p(masked, min_p)
    if top_k > 0:
        masked = apply_top_k(masked, top_k)
    return np.isfinite(np.array(masked[0]))


@pytest.mark.parametrize(
    ("top_p", "min_p", "top_k"),
    [
        (0.9, 0.0, 0),
        (0.5, 0.0, 0),
        (0.999, 0.0, 0),  # more candidates than the first look holds
        (0.0, 0.05, 0),
        (0.0, 0.0, 40),
        (0.95, 0.02, 20),
        (0.3, 0.0, 5),
    ],
)
def test_the_kept_tokens_are_mlx_lms(top_p: float, min_p: float, top_k: int) -> None:
    for seed in range(4):
        logprobs = log_softmax(logits_like_a_model(seed))
        ours = kept(logprobs, top_p, min_p, top_k)
        assert ours is not None
        theirs = mlx_kept(logprobs, top_p, min_p, top_k)
        # Equal, but for tokens at the edge of a long tail (top-p 0.999): mlx-lm adds up
        # the tail's mass in float32, exo in float64; what the two differ on is negligible.
        differ = ours != theirs
        assert np.exp(logprobs[differ]).sum() < 1e-4, (seed, int(ours.sum()), int(theirs.sum()))
        if top_p <= 0.95:
            assert np.array_equal(ours, theirs)


def test_no_filter_keeps_everything() -> None:
    assert kept(log_softmax(logits_like_a_model(0)), 1.0, 0.0, 0) is None


def test_draws_follow_the_tempered_probabilities() -> None:
    row = np.array([2.0, 1.0, 0.5, -1.0, -30.0], np.float32)
    temperature = 0.7
    sampler = RowSampler(protocol.SamplingParams(temperature=temperature, seed=5))
    draws = np.bincount([sampler(row) for _ in range(20000)], minlength=row.size)
    expected = np.exp(row / temperature) / np.exp(row / temperature).sum()
    # 20000 draws: each frequency within 4 standard deviations of its probability.
    spread = 4 * np.sqrt(expected * (1 - expected) / 20000) + 1e-9
    assert np.all(np.abs(draws / 20000 - expected) <= spread), draws
    assert draws[-1] == 0


def test_a_seed_repeats_and_greedy_takes_the_first_likeliest() -> None:
    rows = [logits_like_a_model(seed) for seed in range(30)]

    def reply(seed: int) -> list[int]:
        sampler = RowSampler(protocol.SamplingParams(temperature=1.0, top_p=0.9, seed=seed))
        return [sampler(row) for row in rows]

    assert reply(-7) == reply(-7)  # any signed 64-bit seed, as the API takes
    assert reply(-7) != reply(8)
    tie = np.array([0.0, 3.0, 3.0, 1.0], np.float32)
    assert RowSampler(protocol.SamplingParams(temperature=0))(tie) == 1
