"""Sampling controls beyond temperature and top-p: penalties, logit bias, log-probabilities.

mlx-lm's own presence and frequency penalties look at the last N tokens of prompt and
reply together. OpenAI's count only the reply, over its whole length, so exo applies its
own: a processor that knows where the prompt ends.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_sampler,
)
from mlx_lm.tokenizer_utils import TokenizerWrapper

from exo.engine import protocol

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]
Sampler = Callable[[mx.array], mx.array]

# Log-probability reported for a token that cannot be sampled (masked, -inf): JSON has
# no infinities, and this is the figure OpenAI reports.
LOGPROB_FLOOR = -9999.0

# Tokens looked back on for Ollama-style `repeat_penalty` (Ollama's repeat_last_n default).
REPETITION_CONTEXT = 64


def sampler_for(params: protocol.SamplingParams) -> Sampler:
    """The request's sampler. A seeded one draws from a random key of its own, so a seed
    repeats its reply whatever else the runner samples meanwhile (requests decoded in one
    batch, or interleaved); an unseeded one uses MLX's global generator."""
    if params.seed is None or params.temperature == 0:
        return make_sampler(
            temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k
        )
    return _seeded_sampler(params, mlx_seed(params.seed))


def _seeded_sampler(params: protocol.SamplingParams, seed: int) -> Sampler:
    key = mx.random.key(seed)
    scale = 1.0 / params.temperature

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, draw = mx.random.split(key)
        if 0 < params.top_p < 1.0:
            logprobs = apply_top_p(logprobs, params.top_p)
        if params.min_p:
            logprobs = apply_min_p(logprobs, params.min_p)
        if params.top_k > 0:
            logprobs = apply_top_k(logprobs, params.top_k)
        return mx.random.categorical(logprobs * scale, key=draw)

    return sample


def mlx_seed(seed: int) -> int:
    """The seed as MLX takes it (an unsigned 64-bit integer): the API accepts any signed
    64-bit seed, as OpenAI's does, and distinct seeds stay distinct."""
    return seed % 2**64


def reply_penalty(prompt_tokens: int, presence: float, frequency: float) -> LogitsProcessor:
    """OpenAI's penalties: for each token the reply already holds, subtract `presence`
    once and `frequency` per occurrence. `tokens` is prompt + reply (mlx-lm's view)."""

    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        reply = tokens[prompt_tokens:]
        if reply.size == 0:
            return logits
        counts = mx.zeros((logits.shape[-1],), dtype=logits.dtype).at[reply].add(1.0)
        penalty = frequency * counts + presence * (counts > 0).astype(logits.dtype)
        return logits - penalty

    return apply


def processors_for(params: protocol.SamplingParams, prompt_tokens: int) -> list[LogitsProcessor]:
    """The logits processors a request asks for, cheapest first; empty when none."""
    processors: list[LogitsProcessor] = list(
        make_logits_processors(
            logit_bias=dict(params.logit_bias) or None,
            repetition_penalty=params.repetition_penalty,
            repetition_context_size=REPETITION_CONTEXT,
        )
    )
    if params.presence_penalty or params.frequency_penalty:
        processors.append(
            reply_penalty(prompt_tokens, params.presence_penalty, params.frequency_penalty)
        )
    return processors


def step_logprob(
    tokenizer: TokenizerWrapper, logprobs: mx.array, token: int, top: int | None, at_eos: bool
) -> protocol.TokenLogprob | None:
    """What one generation step adds to its reply's log-probabilities: nothing when none
    were asked for (`top` None) or at the end of the sequence (that step adds no token)."""
    if top is None or at_eos:
        return None
    return token_logprob(tokenizer, logprobs, token, top)


def token_logprob(
    tokenizer: TokenizerWrapper, logprobs: mx.array, token: int, top: int
) -> protocol.TokenLogprob:
    """The sampled token's log-probability and the `top` likeliest tokens at that step."""
    flat = logprobs.reshape(-1)
    alternatives: tuple[protocol.TopLogprob, ...] = ()
    if top > 0:
        ids = mx.argpartition(-flat, kth=top - 1)[:top]
        values = flat[ids]
        order = mx.argsort(-values)
        top_ids: list[int] = ids[order].tolist()  # type: ignore[assignment]
        top_values: list[float] = values[order].tolist()  # type: ignore[assignment]
        alternatives = tuple(
            protocol.TopLogprob(tokenizer.decode([i]), max(v, LOGPROB_FLOOR))
            for i, v in zip(top_ids, top_values, strict=True)
        )
    chosen: float = flat[token].item()  # type: ignore[assignment]
    return protocol.TokenLogprob(
        tokenizer.decode([token]), max(chosen, LOGPROB_FLOOR), alternatives
    )
