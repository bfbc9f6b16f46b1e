"""A lone stream decoded by the fused native step (`native_decode.py`), about twice as
fast as mlx-lm's batch step on a CPU (docs/benchmarks.md).

When a runner has one request and nothing waiting, the batch scheduler gives it this
lane: the prompt is prefilled by MLX (its matrix products are what BLAS does best),
a chunk per step, from the prompt cache's nearest prefix; then its keys and values are
copied into the native caches and each step feeds one token to the native kernel and
samples from its logits with the request's own sampler. When a second request arrives
the lane hands its stream over (`handover`): its keys and values as mlx-lm caches, the
tokens they hold, what is left to feed and to generate, and the batch generator goes on
from there. A reply's cache is kept for the next turn either way.

Only requests without logits processors (penalties, bias, JSON schemas) take it: their
processors see the batch generator's token context, which the lane does not keep.
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
from attrs import define, field
from mlx_lm.models.cache import make_prompt_cache

from exo.engine.native_decode import NativeDecoder, NotSupported

log = logging.getLogger("exo.engine.solo")


@define
class Step:
    """What one step of the lane produced, shaped as mlx-lm's batch responses."""

    uid: int
    token: int
    logprobs: mx.array
    finish_reason: str | None = None
    prompt_cache: list[Any] | None = None
    all_tokens: list[int] | None = None


@define
class Handover:
    """Where a stream stands when the batch generator takes it over."""

    cache: list[Any]
    held_tokens: list[int]  # tokens whose keys and values `cache` holds
    to_feed: list[int]  # tokens still to feed (the rest of the prompt, or the last sampled)
    max_tokens: int  # tokens still to generate


@define
class SoloLane:
    decoder: NativeDecoder
    prompt: list[int]
    cache: list[Any]  # mlx-lm caches during the prefill (from the prompt cache or fresh)
    fed: int  # prompt tokens the cache holds
    max_tokens: int
    sampler: Any
    stop_tokens: frozenset[int]
    prefill_step: int
    generated: list[int] = field(factory=list)
    generated_fed: int = 0  # generated tokens the native caches hold
    native: bool = False  # decoding natively (the prefill is done)

    def step(self) -> Step | None:
        """One prefill chunk (None: no token yet) or one generated token."""
        if not self.native:
            logits = self._prefill_chunk()
            if logits is None:
                return None
        else:
            logits = mx.array(self.decoder.step(self.generated[self.generated_fed]))
            self.generated_fed += 1
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        token = int(self.sampler(logprobs[None])[0].item())
        at_eos = token in self.stop_tokens
        if not at_eos:
            self.generated.append(token)
        if at_eos or len(self.generated) >= self.max_tokens:
            return Step(
                0,
                token,
                logprobs,
                "stop" if at_eos else "length",
                self.kept_cache(),
                self.held_tokens(),
            )
        return Step(0, token, logprobs)

    def _prefill_chunk(self) -> mx.array | None:
        """Feed the next chunk of the prompt through MLX; the last chunk's logits (the
        first token's) once the whole prompt is in, then continue natively."""
        chunk = self.prompt[self.fed : self.fed + self.prefill_step]
        out = self.decoder.model(mx.array([chunk]), cache=self.cache)
        self.fed += len(chunk)
        if self.fed < len(self.prompt):
            mx.eval([c.state for c in self.cache])
            return None
        logits = out[0, -1].astype(mx.float32)
        mx.eval(logits)
        self.decoder.load_cache(self.cache, self.fed)
        self.cache = []
        self.native = True
        return logits

    def held_tokens(self) -> list[int]:
        """Tokens whose keys and values the lane holds: the prompt fed so far, then the
        generated tokens fed back (all but a last one not fed yet)."""
        if not self.native:
            return self.prompt[: self.fed]
        return self.prompt + self.generated[: self.generated_fed]

    def kept_cache(self) -> list[Any]:
        return self.decoder.mlx_cache() if self.native else self.cache

    def handover(self) -> Handover:
        if not self.native:
            return Handover(
                self.cache, self.held_tokens(), self.prompt[self.fed :], self.max_tokens
            )
        left = self.max_tokens - len(self.generated)
        pending = self.generated[self.generated_fed :]
        return Handover(self.kept_cache(), self.held_tokens(), pending, left)


def native_decoder_for(engine: Any) -> NativeDecoder | None:
    """The native decoder of a CPU runner holding a whole model the kernel computes;
    None elsewhere (a GPU, a rank of a distributed instance, another architecture, no
    BLAS with sgemv): those decode in batches only."""
    if engine.group is not None or engine.info.device != "cpu" or engine.info.dtype != "float32":
        return None
    if not NativeDecoder.takes(make_prompt_cache(engine.model)):
        return None  # a sliding window or another cache the kernel does not keep
    try:
        return NativeDecoder(engine.model, engine.info.context_length)
    except NotSupported as exc:
        log.info("single streams decode with MLX: %s", exc)
        return None
