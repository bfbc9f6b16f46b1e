"""Tensor parallelism across runner processes over `mlx.core.distributed` (ring backend).

Every rank holds a slice of every layer (mlx-lm's `model.shard(group)`: attention heads
and MLP columns split, two all-reduces per layer), so all ranks must run every forward
pass together. Rank 0 drives mlx-lm's generation loop as for one model (batches
included); before each forward pass it rings every other rank's doorbell
(`doorbell.Bell`: which cache list, rows, tokens, and rank 0's cache operations since the
last pass, `mirror.py`) and broadcasts the `[rows, n]` input token ids, and the other
ranks run the same pass on them, on caches kept in step with rank 0's. The all-reduces
leave identical logits on every rank; only rank 0 samples.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

from exo.engine import architectures
from exo.engine.doorbell import Bell, Doorbells
from exo.engine.mirror import Journal, Mirror, Witness, split_witness
from exo.engine.pipeline import FORWARD, STOP


def tensor_refusal(config: Mapping[str, Any], ranks: int | None = None) -> str | None:
    """Why this model cannot be tensor-sharded, or None: the table's answer, and also
    whether this runner's mlx-lm has `shard` for it."""
    refusal = architectures.tensor_refusal(config, ranks)
    if refusal is None:
        module = architectures.module_of(config)
        try:
            classes = importlib.import_module(f"mlx_lm.models.{module}")
        except ImportError:
            return f"this runner's mlx-lm has no {module!r} model"
        if not hasattr(classes.Model, "shard"):
            return f"this runner's mlx-lm has no tensor-parallel sharding for {module!r}"
    return refusal


def shard_model(model: nn.Module, group: mx.distributed.Group) -> None:
    """Split every layer across the group, in place (mlx-lm's own sharding)."""
    shard = getattr(model, "shard", None)
    if shard is None:
        module = type(model).__module__.rpartition(".")[2]
        raise ValueError(
            f"architecture {module!r} cannot be tensor-sharded: mlx-lm has no "
            "tensor-parallel sharding for it; place this model with the pipeline strategy"
        )
    shard(group)


def _broadcast(values: mx.array, group: mx.distributed.Group) -> mx.array:
    """Rank 0's `values` on every rank: the others contribute zeros to a sum."""
    if group.rank() != 0:
        values = mx.zeros_like(values)
    return mx.distributed.all_sum(values, group=group)


class TensorHead:
    """What rank 0 hands to mlx-lm's generation loop in place of the model."""

    def __init__(self, model: nn.Module, group: mx.distributed.Group, doorbells: Doorbells) -> None:
        self._model = model
        self._group = group
        self._doorbells = doorbells
        self._journal = Journal()
        self.layers = cast(Any, model).layers

    def make_cache(self) -> list[Any]:
        """The model's own caches, as the other ranks make them, and their witness:
        mlx-lm's `make_prompt_cache` would otherwise give every layer of this stand-in a
        plain KV cache, which is wrong for layers whose state is another kind of cache,
        and keeps every position for sliding-window layers (gpt-oss) instead of the window."""
        return [*make_prompt_cache(self._model), Witness.new(self._journal)]

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, **_: Any) -> mx.array:
        assert cache is not None
        layers, witness = split_witness(cache)
        rows, length = inputs.shape
        self._ring_all(Bell(FORWARD, witness.number, rows, length, 0, self._journal.take()))
        shared = _broadcast(inputs.astype(mx.int32), self._group)
        logits = cast(mx.array, self._model(shared, cache=layers))
        # Evaluate the whole pass now, as the other ranks do: mlx-lm evaluates only the
        # caches after a prefill chunk, which would skip the last layer's all-reduces
        # here while the other ranks wait in them.
        mx.eval(logits)
        return logits

    def stop(self) -> None:
        """Tell the other ranks to leave their loops (the runner is shutting down)."""
        self._ring_all(Bell(STOP))

    def _ring_all(self, bell: Bell) -> None:
        for rank in range(1, self._group.size()):
            self._doorbells.ring(rank, bell)


def serve_follower(model: nn.Module, group: mx.distributed.Group, doorbells: Doorbells) -> None:
    """The loop of every rank after the first, until rank 0 says stop."""
    mirror = Mirror(lambda: make_prompt_cache(model))
    while True:
        bell = doorbells.wait(0)
        if bell.kind == STOP:
            return
        mirror.apply(bell.ops)
        cache = mirror[bell.cache]
        inputs = _broadcast(mx.zeros((bell.rows, bell.length), dtype=mx.int32), group)
        mx.eval(model(inputs, cache=cache))
