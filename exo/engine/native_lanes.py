"""Streams decoded together by the fused native step (`native_decode.py`): on a CPU about
twice mlx-lm's speed for one stream, and every weight read once per step for all of them
(docs/benchmarks.md).

A stream that takes a lane (a slot of the native caches) is prefilled by MLX, a chunk
per step (its matrix products are what BLAS does best), from the prompt cache's nearest
prefix; then its keys and values are copied into its slot, and each step feeds every
decoding lane its last token in one native call and samples each row with the request's
own controls, in numpy (`row_sampling.py`). A reply's cache leaves as mlx-lm's, for the
prompt cache.

Only requests without logits processors (penalties, bias, JSON schemas) take a lane:
their processors read the batch generator's token context, so they decode there.
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
import numpy as np
from attrs import define, field
from mlx_lm.models.cache import make_prompt_cache

from exo.engine.native_decode import NativeDecoder, NotSupported
from exo.engine.row_sampling import RowSampler

log = logging.getLogger("exo.engine.native_lanes")


@define
class Step:
    """What one step of a lane produced, shaped as mlx-lm's batch responses."""

    token: int
    logprobs: mx.array
    finish_reason: str | None = None
    prompt_cache: list[Any] | None = None
    all_tokens: list[int] | None = None


@define
class Lane:
    slot: int
    prompt: list[int]
    cache: list[Any]  # mlx-lm caches while the prompt is prefilled (then in the slot)
    fed: int  # prompt tokens fed so far
    max_tokens: int
    sampler: RowSampler
    stop_tokens: frozenset[int]
    generated: list[int] = field(factory=list)
    generated_fed: int = 0  # generated tokens fed back
    native: bool = False  # decoding natively (the prompt is in its slot)

    @property
    def position(self) -> int:
        """The slot position the next fed token takes."""
        return len(self.prompt) + self.generated_fed

    def held_tokens(self) -> list[int]:
        """Tokens whose keys and values the lane holds."""
        if not self.native:
            return self.prompt[: self.fed]
        return self.prompt + self.generated[: self.generated_fed]

    def sample(self, logits: mx.array, decoder: NativeDecoder, row: np.ndarray) -> Step:
        """The next token from `row` (numpy; `logits` is the same in MLX), drawn in numpy
        (`row_sampling.py`: MLX's sampler costs more than the native step per row on a
        CPU). The log-probabilities stay lazy: computed only for a request that asks."""
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        token = self.sampler(row)
        at_eos = token in self.stop_tokens
        if not at_eos:
            self.generated.append(token)
        if at_eos or len(self.generated) >= self.max_tokens:
            reason = "stop" if at_eos else "length"
            return Step(token, logprobs, reason, self.kept_cache(decoder), self.held_tokens())
        return Step(token, logprobs)

    def kept_cache(self, decoder: NativeDecoder) -> list[Any]:
        """The lane's keys and values as mlx-lm caches."""
        if not self.native:
            return self.cache
        return decoder.mlx_cache(self.slot, len(self.held_tokens()))


class NativeLanes:
    """Up to `decoder.slots` streams on the native step."""

    def __init__(self, decoder: NativeDecoder, prefill_step: int) -> None:
        self.decoder = decoder
        self._prefill_step = prefill_step
        self.lanes: dict[int, Lane] = {}

    def free_slot(self) -> int | None:
        return next((s for s in range(self.decoder.slots) if s not in self.lanes), None)

    def fits(self, tokens: int) -> bool:
        return tokens <= self.decoder.max_positions

    def start(
        self,
        prompt: list[int],
        cache: list[Any] | None,
        cached: int,
        max_tokens: int,
        sampler: RowSampler,
        stop_tokens: frozenset[int],
    ) -> Lane:
        slot = self.free_slot()
        assert slot is not None
        if cache is None or not NativeDecoder.takes(cache):
            cache, cached = make_prompt_cache(self.decoder.model), 0
        lane = Lane(slot, prompt, cache, cached, max_tokens, sampler, stop_tokens)
        self.lanes[slot] = lane
        return lane

    def remove(self, lane: Lane) -> None:
        """End a lane (take its cache first: its slot's memory goes back to the OS)."""
        del self.lanes[lane.slot]
        self.decoder.release(lane.slot)

    def step(self) -> list[tuple[Lane, Step]]:
        """One native step of every decoding lane, then one prefill chunk of the first
        lane still prefilling; what each produced."""
        out: list[tuple[Lane, Step]] = []
        decoding = [lane for lane in self.lanes.values() if lane.native]
        if decoding:
            logits = self.decoder.step_rows(
                [lane.generated[lane.generated_fed] for lane in decoding],
                [lane.position for lane in decoding],
                [lane.slot for lane in decoding],
            )
            rows = mx.array(logits)  # copied: the buffer is the next call's
            for row, lane in enumerate(decoding):
                lane.generated_fed += 1
                out.append((lane, lane.sample(rows[row], self.decoder, logits[row])))
        prefilling = next((lane for lane in self.lanes.values() if not lane.native), None)
        if prefilling is not None:
            first = self._prefill_chunk(prefilling)
            if first is not None:
                out.append((prefilling, prefilling.sample(first, self.decoder, np.array(first))))
        return out

    def _prefill_chunk(self, lane: Lane) -> mx.array | None:
        """Feed the lane's next prompt chunk through MLX; once the whole prompt is in,
        move its keys and values into its slot and give the first token's logits."""
        chunk = lane.prompt[lane.fed : lane.fed + self._prefill_step]
        out = self.decoder.model(mx.array([chunk]), cache=lane.cache)
        lane.fed += len(chunk)
        if lane.fed < len(lane.prompt):
            mx.eval([c.state for c in lane.cache])
            return None
        logits = out[0, -1].astype(mx.float32)
        mx.eval(logits)
        self.decoder.load_cache(lane.cache, lane.fed, lane.slot)
        lane.cache = []
        lane.native = True
        return logits


def native_decoder_for(engine: Any, slots: int) -> NativeDecoder | None:
    """The native decoder of a CPU runner holding a whole model the kernel computes,
    with `slots` streams' caches; None elsewhere (a GPU, a rank of a distributed
    instance, another architecture, no C compiler): there every stream
    decodes in mlx-lm's batches."""
    if engine.group is not None or engine.info.device != "cpu" or engine.info.dtype != "float32":
        return None
    if not NativeDecoder.takes(make_prompt_cache(engine.model)):
        return None  # a sliding window or another cache the kernel does not keep
    try:
        return NativeDecoder(engine.model, engine.info.context_length, slots)
    except NotSupported as exc:
        log.info("streams decode with MLX: %s", exc)
    except (OSError, MemoryError) as exc:  # no address space for the slots (strict overcommit)
        log.warning("streams decode with MLX: no memory for the native caches: %s", exc)
    return None
