"""Continuous batching: the requests of one runner decode together, one step at a time.

mlx-lm's `BatchGenerator` does the batching: it decodes every running sequence in one
forward pass per step, and between steps prefills new prompts a chunk at a time
(`prefill_step` tokens), so a long prompt never stalls the streams already decoding for
its whole prefill. Each sequence keeps its own sampler (a seeded one draws from its own
key), logits processors (penalties, bias, a JSON schema's matcher) and stop tokens.

What this scheduler adds around it:
- admission: at most `batch_size` sequences run; the rest wait in arrival order, and a
  sequence starts only while the keys and values of those running (and the prompt
  cache) fit the tokens of KV memory placement planned;
- the prompt cache: a prompt starts from the longest cached prefix of it, and every
  reply's cache is kept for the next turn (`prompt_cache.py`);
- each request's text: detokenizing, stop strings, log-probabilities (`reply.py`);
- failures: a request whose logits processor fails ends alone with an error; a forward
  pass that fails ends every running request and starts a fresh generator, unless the
  ring of a distributed instance broke (`broken`): then the runner must exit.

Where the runner has the fused native step (`native_lanes.py`: a CPU, a whole llama
model), requests without logits processors decode in its lanes instead, together, at
about twice mlx-lm's speed for one stream; the batch generator keeps the others. A step
steps both.

The model may be a whole one or the head of a distributed instance (`PipelineHead`,
`TensorHead`): the other ranks follow its cache operations (`exo.engine.mirror`).

Pure of I/O: the runner feeds it requests and cancels, calls `step` while it is busy
and sends what comes back.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from attrs import define
from mlx_lm.generate import BatchGenerator, StopSequences

from exo.engine import protocol, sampling
from exo.engine.mlx_engine import MlxEngine, Prepared
from exo.engine.native_decode import NativeDecoder
from exo.engine.native_lanes import Lane, NativeLanes
from exo.engine.prompt_cache import PromptCache
from exo.engine.reply import Reply
from exo.engine.row_sampling import RowSampler

log = logging.getLogger("exo.engine.batching")

Out = protocol.TokenOut | protocol.Finished | protocol.RequestError

# Prompts prefilled together in one chunk (each padded to the longest of them).
PREFILL_BATCH = 8


@define
class _Sequence:
    prepared: Prepared
    processors: list[sampling.LogitsProcessor]
    reply: Reply
    detokenizer: Any
    uid: int = -1
    cached_tokens: int = 0
    error: str | None = None
    done: bool = False

    @property
    def request_id(self) -> str:
        return self.prepared.request_id

    @property
    def tokens(self) -> int:
        """Tokens this sequence holds keys and values for (about: the prompt and reply)."""
        return len(self.prepared.prompt) + self.reply.completion_tokens


class BatchScheduler:
    """The requests of one runner holding a whole model, decoded in batches."""

    def __init__(
        self,
        engine: MlxEngine,
        *,
        batch_size: int,
        prefill_step: int,
        kv_budget_tokens: int,
        prompt_cache: bool = True,
        native: NativeDecoder | None = None,
    ) -> None:
        self._engine = engine
        self._batch_size = batch_size
        self._prefill_step = prefill_step
        self._kv_budget = kv_budget_tokens
        eos = sorted(int(t) for t in engine.tokenizer.eos_token_ids)
        self._eos = frozenset(eos)
        self._stop_at_eos = StopSequences([[t] for t in eos])
        self._no_stops = StopSequences()
        self._generator = self._new_generator()
        self._waiting: deque[_Sequence] = deque()
        self._running: dict[int, _Sequence] = {}
        self.cache = PromptCache(kv_budget_tokens) if prompt_cache else None
        # A failed pass that leaves a distributed instance unusable (its ring broke).
        self.broken = False
        # The fused native step's lanes (None: every stream decodes in mlx-lm's batches),
        # and the sequence in each lane, by slot.
        self._lanes = NativeLanes(native, prefill_step) if native is not None else None
        self._in_lanes: dict[int, _Sequence] = {}

    def _new_generator(self) -> BatchGenerator:
        return BatchGenerator(
            self._engine.model,
            completion_batch_size=self._batch_size,
            prefill_batch_size=min(self._batch_size, PREFILL_BATCH),
            prefill_step_size=self._prefill_step,
        )

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._running or self._in_lanes)

    @property
    def running(self) -> int:
        return len(self._running) + len(self._in_lanes)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, request: protocol.GenerateRequest) -> list[Out]:
        """Queue a request. Bad parameters and over-long prompts raise ValueError here;
        a count-only request (`max_tokens` 0) is answered at once."""
        prepared = self._engine.prepare(request)
        if prepared.max_tokens == 0:
            return [prepared.counted()]
        processors = self._engine.processors(prepared)
        sequence = _Sequence(
            prepared,
            processors,
            Reply(request.request_id, prepared.params.stop),
            self._engine.tokenizer.detokenizer,
        )
        self._waiting.append(sequence)
        return []

    def cancel(self, request_id: str) -> list[Out]:
        """End a request wherever it is: waiting, it finishes with nothing; running, with
        what it generated so far. Unknown ids (already ended) are ignored."""
        for sequence in self._waiting:
            if sequence.request_id == request_id:
                self._waiting.remove(sequence)
                return [protocol.Finished(request_id, "cancelled", 0, 0)]
        for sequence in self._all_running():
            if sequence.request_id == request_id:
                self._release(sequence, keep_cache=True)
                return self._finish(sequence, "cancelled")
        return []

    def cancel_all(self) -> list[Out]:
        out: list[Out] = []
        for request_id in [s.request_id for s in self._waiting] + [
            s.request_id for s in self._all_running()
        ]:
            out.extend(self.cancel(request_id))
        return out

    def _all_running(self) -> list[_Sequence]:
        return [*self._in_lanes.values(), *self._running.values()]

    def step(self) -> list[Out]:
        """Start what fits, then one decode step of every running sequence and one
        prefill chunk of those starting; the messages that step produced."""
        self._admit()
        out = self._lanes_step() if self._in_lanes else []
        if not self._running:
            return out
        try:
            _, responses = self._generator.next()
        except Exception as exc:
            return out + self._fail_all(exc)
        for response in responses:
            sequence = self._running.get(response.uid)
            if sequence is not None and not sequence.done:
                out.extend(self._on_token(sequence, response))
        out.extend(self._end_failed())
        return out

    # -- admission -----------------------------------------------------------------

    def _admit(self) -> None:
        in_use = sum(s.tokens for s in self._all_running())
        while self._waiting and self.running < self._batch_size:
            sequence = self._waiting[0]
            size = len(sequence.prepared.prompt)
            if self.running and in_use + size > self._kv_budget:
                break  # it waits until running sequences free their memory
            self._waiting.popleft()
            in_use += size
            if self.cache is not None:
                self.cache.trim(in_use)
            if self._takes_lane(sequence):
                self._start_lane(sequence)
            else:
                self._start(sequence)

    def _start(self, sequence: _Sequence) -> None:
        prepared = sequence.prepared
        prompt = prepared.prompt
        cache, cached = self.cache.take(prompt) if self.cache is not None else (None, 0)
        sequence.cached_tokens = cached
        (uid,) = self._generator.insert(
            [prompt[cached:]],
            max_tokens=[prepared.max_tokens],
            caches=[cache] if cache is not None else None,
            all_tokens=[prompt[:cached]],
            samplers=[sampling.sampler_for(prepared.params)],
            logits_processors=[[self._guarded(sequence)]] if sequence.processors else None,
            stop_sequences=[self._no_stops if prepared.params.ignore_eos else self._stop_at_eos],
        )
        sequence.uid = uid
        self._running[uid] = sequence

    # -- the native lanes ----------------------------------------------------------

    def _takes_lane(self, sequence: _Sequence) -> bool:
        prepared = sequence.prepared
        return (
            self._lanes is not None
            and not sequence.processors
            and self._lanes.free_slot() is not None
            and self._lanes.fits(len(prepared.prompt) + prepared.max_tokens)
        )

    def _start_lane(self, sequence: _Sequence) -> None:
        assert self._lanes is not None
        prepared = sequence.prepared
        cache, cached = self.cache.take(prepared.prompt) if self.cache is not None else (None, 0)
        lane = self._lanes.start(
            prepared.prompt,
            cache,
            cached,
            prepared.max_tokens,
            RowSampler(prepared.params),
            frozenset() if prepared.params.ignore_eos else self._eos,
        )
        sequence.cached_tokens = lane.fed
        self._in_lanes[lane.slot] = sequence

    def _lanes_step(self) -> list[Out]:
        assert self._lanes is not None
        try:
            produced = self._lanes.step()
        except Exception as exc:
            log.exception("the native step failed; ending its %d requests", len(self._in_lanes))
            message = engine_error(exc)
            out: list[Out] = []
            for lane in list(self._lanes.lanes.values()):
                self._lanes.remove(lane)
                sequence = self._in_lanes.pop(lane.slot)
                sequence.done = True
                out.append(protocol.RequestError(sequence.request_id, message, failed=True))
            return out
        out = []
        for lane, response in produced:
            sequence = self._in_lanes.get(lane.slot)
            if sequence is not None and not sequence.done:
                out.extend(self._on_token(sequence, response))
        return out

    def _lane_of(self, sequence: _Sequence) -> Lane | None:
        if self._lanes is None:
            return None
        return next(
            (self._lanes.lanes[slot] for slot, s in self._in_lanes.items() if s is sequence), None
        )

    def _guarded(self, sequence: _Sequence) -> sampling.LogitsProcessor:
        """The sequence's processors as one, whose failure ends only this sequence."""

        def process(tokens: Any, logits: Any) -> Any:
            if sequence.error is not None:
                return logits
            try:
                for processor in sequence.processors:
                    logits = processor(tokens, logits)
            except Exception as exc:
                log.error("request %s: logits processor failed: %r", sequence.request_id, exc)
                sequence.error = engine_error(exc)
            return logits

        return process

    # -- tokens --------------------------------------------------------------------

    def _on_token(self, sequence: _Sequence, response: Any) -> list[Out]:
        params = sequence.prepared.params
        detokenizer = sequence.detokenizer
        at_eos = response.finish_reason == "stop"
        if not at_eos:
            detokenizer.add_token(response.token)
        if response.finish_reason is not None:
            detokenizer.finalize()
        logprob = sampling.step_logprob(
            self._engine.tokenizer, response.logprobs, response.token, params.logprobs, at_eos
        )
        reply = sequence.reply
        out: list[Out] = []
        piece = reply.add(detokenizer.last_segment, None if at_eos else response.token, logprob)
        if piece is not None:
            out.append(piece)
        if response.finish_reason is not None:
            self._keep_cache(response.all_tokens, response.prompt_cache)
            self._release(sequence, keep_cache=False)
            out.extend(self._finish(sequence, "stop" if at_eos else "length"))
        elif reply.matched is not None:
            self._release(sequence, keep_cache=True)
            out.extend(self._finish(sequence, "stop"))
        return out

    def _release(self, sequence: _Sequence, keep_cache: bool) -> None:
        """Take a running sequence out (keeping its cache for the next turn if asked)."""
        lane = self._lane_of(sequence)
        if lane is not None:
            assert self._lanes is not None
            if keep_cache:
                self._keep_cache(lane.held_tokens(), lane.kept_cache(self._lanes.decoder))
            self._lanes.remove(lane)
            del self._in_lanes[lane.slot]
        elif keep_cache:
            self._stop([sequence])
        else:
            del self._running[sequence.uid]

    def _finish(self, sequence: _Sequence, reason: protocol.FinishReason) -> list[Out]:
        sequence.done = True
        return list(
            sequence.reply.finish(reason, len(sequence.prepared.prompt), sequence.cached_tokens)
        )

    def _stop(self, sequences: Iterable[_Sequence]) -> None:
        """Take running sequences out of the batch, keeping their caches."""
        uids = [s.uid for s in sequences]
        caches = self._generator.remove(uids, return_prompt_caches=self.cache is not None)
        for cache, tokens in caches.values():
            self._keep_cache(tokens, cache)
        for uid in uids:
            self._running.pop(uid, None)

    def _keep_cache(self, tokens: list[int] | None, cache: list[Any] | None) -> None:
        if self.cache is not None and tokens and cache:
            self.cache.keep(tokens, cache)

    # -- failures ------------------------------------------------------------------

    def _end_failed(self) -> list[Out]:
        failed = [s for s in self._running.values() if s.error is not None]
        if not failed:
            return []
        self._generator.remove([s.uid for s in failed])
        out: list[Out] = []
        for sequence in failed:
            del self._running[sequence.uid]
            sequence.done = True
            assert sequence.error is not None
            out.append(protocol.RequestError(sequence.request_id, sequence.error, failed=True))
        return out

    def _fail_all(self, exc: Exception) -> list[Out]:
        log.exception("a batch step failed; ending its %d requests", len(self._running))
        if self._engine.group is not None and isinstance(exc, RuntimeError):
            log.error("the ring of this instance broke; the runner exits")
            self.broken = True
        message = engine_error(exc)
        out: list[Out] = [
            protocol.RequestError(s.request_id, message, failed=True)
            for s in self._running.values()
        ]
        self._running.clear()
        self._generator.close()
        self._generator = self._new_generator()
        return out


def engine_error(exc: Exception) -> str:
    """What a request that failed in the engine is told."""
    return f"engine error: {type(exc).__name__}: {exc}"
