"""A follower's caches follow rank 0's through the journal, whatever mlx-lm's batch
generator does to them.

In one process: a stand-in head journals the cache operations of a `BatchGenerator`
(requests joining and finishing at different steps, prompts of different lengths padded
together, a prompt cache that copies and trims entries for the next turn) and runs the
whole model on its caches; a `Mirror` applies each pass's journal entries to caches of
its own and runs the same model on the list the pass names. Both must give the same
logits at every pass, and the mirror must drop every list the head let go of.
"""

from __future__ import annotations

import gc
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import make_prompt_cache

from exo.engine.mirror import Journal, Mirror, MirrorError, Witness, split_witness
from exo.engine.prompt_cache import PromptCache
from tests.engine.test_architectures import tiny_model

# A plain KV cache, rotating sliding-window caches, and gpt-oss's alternating attention.
CASES = ("llama", "llama-tied-sliding", "gemma3_text", "gpt_oss")


class JournalingHead:
    """The shape of `PipelineHead` / `TensorHead` without a ring: the follower it feeds
    is a `Mirror` in this process, on the same model."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._journal = Journal()
        self.mirror = Mirror(lambda: make_prompt_cache(model))
        self.layers = cast(Any, model).layers
        self.passes = 0

    def make_cache(self) -> list[Any]:
        return [*make_prompt_cache(self._model), Witness.new(self._journal)]

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, **_: Any) -> mx.array:
        assert cache is not None
        layers, witness = split_witness(cache)
        self.mirror.apply(self._journal.take())
        mine = cast(mx.array, self._model(inputs, cache=layers))
        theirs = cast(mx.array, self._model(inputs, cache=self.mirror[witness.number]))
        mx.eval(mine, theirs)
        assert mx.array_equal(mine, theirs).item(), f"pass {self.passes} differs"
        self.passes += 1
        return mine

    def settle(self) -> int:
        """Lists the mirror still holds once the journal's last entries are applied."""
        gc.collect()
        self.mirror.apply(self._journal.take())
        return len(self.mirror)


def drain(generator: BatchGenerator, uids: list[int], steps: int | None = None) -> dict[int, Any]:
    """Steps until the sequences `uids` finished (or `steps` steps): each one's last
    response by uid."""
    last: dict[int, Any] = {}
    while len(last) < len(uids) and (steps is None or steps > 0):
        for response in generator.next_generated():
            if response.finish_reason is not None:
                last[response.uid] = response
        steps = None if steps is None else steps - 1
    return last


@pytest.mark.parametrize("case", CASES)
def test_a_mirror_gives_the_logits_of_rank_0_through_a_batch_and_the_next_turn(
    case: str,
) -> None:
    head = JournalingHead(tiny_model(case))
    prompt_cache = PromptCache(budget_tokens=4096)
    generator = BatchGenerator(
        cast(nn.Module, head), completion_batch_size=4, prefill_batch_size=4, prefill_step_size=4
    )
    prompts = [[1, 5, 9, 33, 2, 7, 100, 3, 42], [8, 8, 2], [4, 40, 41, 42, 43, 44]]
    first = generator.insert(prompts[:2], max_tokens=[6, 9])
    drain(generator, first, steps=3)
    late = generator.insert([prompts[2]], max_tokens=[5])  # joins a running batch
    ended = drain(generator, [*first, *late])
    # The next turns of the first conversation start from copies of its kept cache: one
    # that extends it, one that departs from its last token (trimmed, where caches can be).
    history = ended[first[0]].all_tokens
    kept = generator.insert([history], max_tokens=[1])
    reply = drain(generator, kept)[kept[0]]
    prompt_cache.keep(reply.all_tokens, reply.prompt_cache)
    extension = [*reply.all_tokens, 77, 78]
    cache, cached = prompt_cache.take(extension)
    assert cache is not None and cached == len(extension) - 2
    turns = generator.insert([extension[cached:]], max_tokens=[4], caches=[cache])
    departure = [*history, 77]
    cache, cached = prompt_cache.take(departure)
    if cache is not None:  # None for rotating caches: they cannot be trimmed back
        assert cached == len(history)
        turns += generator.insert([departure[cached:]], max_tokens=[4], caches=[cache])
    del cache
    drain(generator, turns)
    assert head.passes > 10
    generator.close()
    del generator, ended, reply
    # What the prompt cache still holds, the mirror holds; nothing else.
    assert head.settle() == len(prompt_cache) == 1
    prompt_cache.trim(4096)  # running sequences take the whole budget: evicted
    assert head.settle() == len(prompt_cache) == 0


def test_a_mirror_out_of_step_says_so() -> None:
    mirror = Mirror(list)
    with pytest.raises(MirrorError, match="lacks"):
        mirror.apply(b'[["filter",3,[0]]]')
    with pytest.raises(MirrorError, match="unknown cache operation 'spin'"):
        mirror.apply(b'[["spin",1]]')
    with pytest.raises(TypeError, match="did not make"):
        split_witness([object()])
