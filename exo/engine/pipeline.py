"""Pipeline parallelism across runner processes over `mlx.core.distributed` (ring backend).

Each rank keeps only its own slice of `model.model.layers` (the weights are loaded lazily,
so the other layers never reach memory). Rank 0 embeds the tokens and runs its layers;
each later rank receives the hidden states from the rank before it, runs its layers and
passes them on; the last rank applies the final norm and the head and sends the logits of
the last position back to rank 0, its ring neighbour. Rank 0 samples, detokenizes and
streams, through mlx-lm's own generation loop: to it the whole pipeline is one model.

Between ranks, every forward pass is a doorbell `[kind, n, dtype]` (kind 2: a new sequence,
reset the caches; 1: continue; 0: stop; see `doorbell.py`), rung once the hidden states
`[1, n, hidden]` are computed, which then follow through the ring.
This works for mlx-lm models whose inner model takes `input_embeddings` (Llama, Qwen,
Mistral and most decoder-only families).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

from exo.engine.blas import set_blas_threads
from exo.engine.doorbell import Doorbells

STOP, CONTINUE, NEW_SEQUENCE = 0, 1, 2
DTYPES = (mx.float32, mx.float16, mx.bfloat16)


def init_ring(
    rank: int, hosts: list[str], strategy: str = "pipeline"
) -> tuple[mx.distributed.Group, Doorbells]:
    """Join the ring of `hosts` ("ip:port" per rank) as `rank`; blocks until all joined.
    Also returns this rank's doorbells (listening before the ring forms)."""
    doorbells = Doorbells(rank, hosts)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as hostfile:
        json.dump(hosts, hostfile)
    os.environ["MLX_HOSTFILE"] = hostfile.name
    os.environ["MLX_RANK"] = str(rank)
    try:
        group = mx.distributed.init(strict=True, backend="ring")
    finally:
        os.unlink(hostfile.name)
    if group.size() != len(hosts) or group.rank() != rank:
        raise RuntimeError(f"ring formed as rank {group.rank()} of {group.size()}")
    # Tensor ranks that share this machine compute at once and share its cores; pipeline
    # ranks compute in turn, each with every core.
    here = hosts[rank].rpartition(":")[0]
    sharing = sum(1 for h in hosts if h.rpartition(":")[0] == here)
    set_blas_threads((os.cpu_count() or 1) // (sharing if strategy == "tensor" else 1))
    return group, doorbells


def keep_layers(model: nn.Module, start: int, end: int, last: bool) -> None:
    """Cut the model down to layers [start, end); only the last rank keeps the norm."""
    inner: Any = cast(Any, model).model
    inner.layers = inner.layers[start:end]
    if not last:
        inner.norm = nn.Identity()


class PipelineHead:
    """What rank 0 hands to mlx-lm's generation loop in place of the model."""

    def __init__(
        self,
        model: nn.Module,
        group: mx.distributed.Group,
        doorbells: Doorbells,
        vocab_size: int,
    ) -> None:
        self._model = model
        self._inner: Any = cast(Any, model).model
        self._group = group
        self._doorbells = doorbells
        self._vocab = vocab_size
        self.layers = self._inner.layers  # make_prompt_cache builds caches for these

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, **_: Any) -> mx.array:
        assert cache is not None
        kind = NEW_SEQUENCE if cache[0].offset == 0 else CONTINUE
        hidden = self._inner(inputs, cache)
        mx.eval(hidden)
        self._doorbells.ring(1, (kind, inputs.shape[1], DTYPES.index(hidden.dtype)))
        mx.eval(mx.distributed.send(hidden, 1, group=self._group))
        last = self._group.size() - 1
        self._doorbells.wait(last)  # the last rank has the logits ready
        logits = mx.distributed.recv((1, 1, self._vocab), hidden.dtype, last, group=self._group)
        mx.eval(logits)
        return logits

    def stop(self) -> None:
        """Tell the other ranks to leave their loops (the runner is shutting down)."""
        self._doorbells.ring(1, (STOP, 0, 0))


def serve_follower(
    model: nn.Module, group: mx.distributed.Group, doorbells: Doorbells, hidden_size: int
) -> None:
    """The loop of every rank after the first, until rank 0 says stop."""
    rank, size = group.rank(), group.size()
    inner: Any = cast(Any, model).model
    last = rank == size - 1
    cache: list[Any] = make_prompt_cache(model)
    while True:
        kind, length, dtype_code = doorbells.wait(rank - 1)
        dtype = DTYPES[dtype_code]
        if kind == STOP:
            if not last:
                doorbells.ring(rank + 1, (kind, length, dtype_code))
            return
        if kind == NEW_SEQUENCE:
            cache = make_prompt_cache(model)
        hidden = mx.distributed.recv((1, length, hidden_size), dtype, rank - 1, group=group)
        placeholder = mx.zeros((1, length), dtype=mx.int32)
        if last:
            logits = model(placeholder, cache=cache, input_embeddings=hidden)[:, -1:, :]
            logits = logits.astype(dtype)
            mx.eval(logits)
            doorbells.ring(0, (CONTINUE, 1, dtype_code))
            mx.eval(mx.distributed.send(logits, 0, group=group))
        else:
            out = inner(placeholder, cache, input_embeddings=hidden)
            mx.eval(out)
            doorbells.ring(rank + 1, (kind, length, dtype_code))
            mx.eval(mx.distributed.send(out, rank + 1, group=group))
