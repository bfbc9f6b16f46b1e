"""Pipeline parallelism across runner processes over `mlx.core.distributed` (ring backend).

Each rank computes only its own slice [start, end) of the model's layers (the weights are
loaded lazily, so the other layers never reach memory). Rank 0 embeds the tokens and runs
its layers; each later rank receives the hidden states from the rank before it, runs its
layers and passes them on; the last rank applies the final norm and the head and sends
the logits of the last position back to rank 0, its ring neighbour. Rank 0 samples,
detokenizes and streams, through mlx-lm's own generation loop: to it the whole pipeline
is one model.

Between ranks, every forward pass is a doorbell (`doorbell.Bell`: which cache list, rows,
tokens, dtype, and rank 0's cache operations since the last pass; kind 0 says stop), rung
once the hidden states `[rows, n, hidden]` are computed, which then follow through the
ring. Each rank applies the cache operations to its own caches (`mirror.py`) before it
runs the pass, so rank 0 batches requests as a single runner does: mlx-lm's
`BatchGenerator` drives the head, and every rank holds the same rows.

How a model is cut (`keep_layers`), so that mlx-lm's own forward pass still runs on every
rank, unchanged, whatever the architecture:

- The layers list keeps its length: a layer outside the slice becomes a weightless
  pass-through that keeps the original's settings (`use_sliding` and the like). Models
  choose masks and cache types by absolute layer number (gemma3's sliding-window
  pattern, gpt-oss's alternating attention, llama's `layer_types`) and build masks from
  `cache[0]` or `cache[first_global_layer]`; all of that stays right.
- The cache list therefore covers every layer; the caches of the skipped layers get
  one-wide placeholder keys after each pass (`_advance_skipped`), so their offsets (and a
  rotating cache's position) match what the real layers would have, and so do masks.
- A later rank's embedding hands the inner model the received hidden states instead of
  looking up the (placeholder) tokens: many models take no `input_embeddings` (phi3 and
  deepseek-v3 nowhere, gpt-oss not in the outer model that applies the head), and some
  scale whatever they get as embeddings (gemma, granite, minicpm), which the hand-over
  undoes. The last rank keeps the embedding weights only when the head is tied to them;
  the other ranks drop the head.

`exo.engine.architectures` lists the architectures for which this is verified;
`keep_layers` refuses the others, saying why.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

from exo.engine import architectures
from exo.engine.architectures import Architecture
from exo.engine.blas import set_blas_threads
from exo.engine.doorbell import Bell, Doorbells
from exo.engine.mirror import Journal, Mirror, Witness, split_witness
from exo.engine.ring_guard import GuardProcess

GUARD_ENV = "EXO_RING_GUARD"

STOP, FORWARD = 0, 1
DTYPES = (mx.float32, mx.float16, mx.bfloat16)


def init_ring(
    rank: int, hosts: list[str], strategy: str = "pipeline", doorbell_key: bytes = b""
) -> tuple[mx.distributed.Group, Doorbells]:
    """Join the ring of `hosts` ("ip:port" per rank) as `rank`; blocks until all joined.
    Also returns this rank's doorbells (listening before the ring forms, guarded by
    `doorbell_key`). The ring's own sockets are guarded by the same key (`ring_guard.py`);
    `EXO_RING_GUARD=always` guards loopback rings too, for tests and benchmarks."""
    doorbells = Doorbells(rank, hosts, doorbell_key)
    guard = GuardProcess(rank, hosts, doorbell_key, always=os.environ.get(GUARD_ENV) == "always")
    doorbells.ring_guard = guard
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as hostfile:
        json.dump(guard.hostfile, hostfile)
    os.environ["MLX_HOSTFILE"] = hostfile.name
    os.environ["MLX_RANK"] = str(rank)
    try:
        group = mx.distributed.init(strict=True, backend="ring")
    except BaseException:
        guard.close()
        raise
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


def pipeline_refusal(config: Mapping[str, Any], ranks: int | None = None) -> str | None:
    """Why this model cannot be pipeline-sharded, or None: the table's answer, and also
    whether this runner's mlx-lm has the architecture at all."""
    refusal = architectures.pipeline_refusal(config, ranks)
    if refusal is None:
        module = architectures.module_of(config)
        try:
            importlib.import_module(f"mlx_lm.models.{module}")
        except ImportError:
            return f"this runner's mlx-lm has no {module!r} model"
    return refusal


def architecture(model: nn.Module) -> Architecture:
    """The table's entry for a loaded mlx-lm model; ValueError saying why when it has none."""
    module = type(model).__module__.rpartition(".")[2]
    refusal = architectures.pipeline_refusal({"model_type": module})
    if refusal is not None:
        raise ValueError(refusal)
    return architectures.ARCHITECTURES[module]


class _Hollow(nn.Module):
    """A module of a skipped layer without its weights: only its settings are kept, for
    model code that reads them (`make_cache` asking a layer whether it slides)."""


class _SkippedLayer(_Hollow):
    """A layer another rank computes: the hidden states pass through unchanged."""

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        return x


def _hollow(value: Any, into: _Hollow | None = None) -> Any:
    """`value` with every array dropped (None) and every module hollowed."""
    if isinstance(value, mx.array):
        return None
    if isinstance(value, nn.Module):
        hollow = into if into is not None else _Hollow()
        hollow.__dict__.update(
            (k, v) for k, v in value.__dict__.items() if k not in hollow.__dict__
        )
        for key, child in value.items():
            dict.__setitem__(hollow, key, _hollow(child))
        return hollow
    if isinstance(value, list | tuple):
        return type(value)(_hollow(v) for v in cast(list[Any], value))
    if isinstance(value, dict):
        return {k: _hollow(v) for k, v in cast(dict[Any, Any], value).items()}
    return value


class _Injected(nn.Module):
    """A later rank's token embedding: it returns the hidden states received from the
    rank before (set by `later_stage`) in place of embeddings of the placeholder tokens.

    `scale`: what the inner model multiplies embeddings by once looked up; the hidden
    states are divided by it first, so that they reach the layers as they left the rank
    before (to float rounding). `embedding`: the real one, kept where the head is tied.
    """

    def __init__(self, embedding: nn.Module | None, scale: float | None) -> None:
        super().__init__()
        if embedding is not None:
            self.embedding = embedding
        object.__setattr__(self, "_scale", scale)
        object.__setattr__(self, "_hidden", None)

    def feed(self, hidden: mx.array | None) -> None:
        object.__setattr__(self, "_hidden", hidden)

    def __call__(self, inputs: mx.array) -> mx.array:
        hidden: mx.array | None = self._hidden
        if hidden is None or hidden.shape[:2] != inputs.shape[:2]:
            raise RuntimeError("a later pipeline rank's model ran without its hidden states")
        return hidden if self._scale is None else hidden / self._scale

    def as_linear(self, x: mx.array) -> mx.array:
        """The tied head (the last rank)."""
        return cast(Any, self).embedding.as_linear(x)


def _embed_scale(arch: Architecture, args: Any) -> float | None:
    if arch.embed_scale is None:
        return None
    if arch.embed_scale == "sqrt_hidden":
        return float(args.hidden_size) ** 0.5
    if arch.embed_scale == "sqrt_hidden_bf16":  # gemma3 rounds the factor to bfloat16
        return cast(float, mx.array(float(args.hidden_size) ** 0.5, mx.bfloat16).item())
    return float(getattr(args, arch.embed_scale))


def keep_layers(model: nn.Module, start: int, end: int, last: bool) -> None:
    """Cut the model down to what the rank computing layers [start, end) needs, in place
    (see the module's docstring); before its weights are evaluated, so that the rest is
    never loaded. Only the last rank keeps the final norm and the head; ValueError for
    an architecture exo has not verified."""
    arch = architecture(model)
    outer: Any = model
    inner: Any = getattr(outer, arch.inner)
    layers: list[nn.Module] = inner.layers
    if not 0 <= start < end <= len(layers):
        raise ValueError(f"layers [{start}, {end}) are not within [0, {len(layers)})")
    for index, layer in enumerate(layers):
        if not start <= index < end and not isinstance(layer, _SkippedLayer):
            layers[index] = _hollow(layer, _SkippedLayer())
    tied = arch.head not in outer
    if not last:
        setattr(inner, arch.norm, nn.Identity())
        if not tied:
            outer.pop(arch.head)
    if start > 0:
        embedding = getattr(inner, arch.embed)
        if isinstance(embedding, _Injected):  # cut before
            embedding = embedding.get("embedding")
        kept = embedding if last and tied else None
        setattr(inner, arch.embed, _Injected(kept, _embed_scale(arch, outer.args)))


def make_cache(model: nn.Module) -> list[Any]:
    """The caches of one sequence: the model's own (`make_cache`), one per layer, skipped
    ones included."""
    return make_prompt_cache(model)


def _advance_skipped(model: nn.Module, cache: list[Any], batch: int, length: int) -> None:
    """Move the skipped layers' caches on by `length` positions, as the real layers did.

    mlx-lm's own cache code moves them, so offsets and rotation follow its rules exactly,
    with one-wide placeholder keys (about 10 us a skipped layer per pass, measured).
    Nothing else reads those arrays, so they are evaluated here: left lazy, each would
    grow its graph by a node per generated token.
    """
    layers: list[nn.Module] = getattr(model, architecture(model).inner).layers
    placeholder = mx.zeros((batch, 1, length, 1), dtype=mx.float16)
    moved = [
        layer_cache.update_and_fetch(placeholder, placeholder)
        for layer, layer_cache in zip(layers, cache, strict=True)
        if isinstance(layer, _SkippedLayer)
    ]
    if moved:
        mx.eval(moved)


def first_stage(model: nn.Module, tokens: mx.array, cache: list[Any]) -> mx.array:
    """Rank 0's share of a forward pass: the hidden states after its layers."""
    inner: Any = getattr(model, architecture(model).inner)
    hidden = cast(mx.array, inner(tokens, cache))
    _advance_skipped(model, cache, tokens.shape[0], tokens.shape[1])
    return hidden


def later_stage(model: nn.Module, hidden: mx.array, cache: list[Any], last: bool) -> mx.array:
    """A later rank's share of a forward pass on the hidden states from the rank before:
    the hidden states after its layers, or on the last rank the logits of the last
    position (`[batch, 1, vocab]`)."""
    arch = architecture(model)
    inner: Any = getattr(model, arch.inner)
    embedding = getattr(inner, arch.embed)
    if not isinstance(embedding, _Injected):
        raise RuntimeError("a later pipeline rank's model must be cut by keep_layers")
    placeholder = mx.zeros(hidden.shape[:2], dtype=mx.int32)
    embedding.feed(hidden)
    try:
        if last:
            out = cast(mx.array, model(placeholder, cache=cache))[:, -1:, :]
        else:
            out = cast(mx.array, inner(placeholder, cache))
    finally:
        embedding.feed(None)
    _advance_skipped(model, cache, hidden.shape[0], hidden.shape[1])
    return out


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
        self._group = group
        self._doorbells = doorbells
        self._vocab = vocab_size
        self._journal = Journal()
        self.layers = cast(Any, model).layers

    def make_cache(self) -> list[Any]:
        """The model's own caches and their witness (mlx-lm's `make_prompt_cache` asks
        for these)."""
        return [*make_cache(self._model), Witness.new(self._journal)]

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, **_: Any) -> mx.array:
        assert cache is not None
        layers, witness = split_witness(cache)
        rows, length = inputs.shape
        hidden = first_stage(self._model, inputs, layers)
        mx.eval(hidden)
        dtype = DTYPES.index(hidden.dtype)
        ops = self._journal.take()
        self._doorbells.ring(1, Bell(FORWARD, witness.number, rows, length, dtype, ops))
        mx.eval(mx.distributed.send(hidden, 1, group=self._group))
        last = self._group.size() - 1
        self._doorbells.wait(last)  # the last rank has the logits ready
        logits = mx.distributed.recv((rows, 1, self._vocab), hidden.dtype, last, group=self._group)
        mx.eval(logits)
        return logits

    def stop(self) -> None:
        """Tell the other ranks to leave their loops (the runner is shutting down)."""
        self._doorbells.ring(1, Bell(STOP))


def serve_follower(
    model: nn.Module, group: mx.distributed.Group, doorbells: Doorbells, hidden_size: int
) -> None:
    """The loop of every rank after the first, until rank 0 says stop."""
    rank, size = group.rank(), group.size()
    last = rank == size - 1
    mirror = Mirror(lambda: make_cache(model))
    while True:
        bell = doorbells.wait(rank - 1)
        if bell.kind == STOP:
            if not last:
                doorbells.ring(rank + 1, bell)
            return
        mirror.apply(bell.ops)
        cache = mirror[bell.cache]
        dtype = DTYPES[bell.dtype]
        shape = (bell.rows, bell.length, hidden_size)
        hidden = mx.distributed.recv(shape, dtype, rank - 1, group=group)
        out = later_stage(model, hidden, cache, last)
        if last:
            logits = out.astype(dtype)
            mx.eval(logits)
            doorbells.ring(0, Bell(FORWARD, bell.cache, bell.rows, 1, bell.dtype))
            mx.eval(mx.distributed.send(logits, 0, group=group))
        else:
            mx.eval(out)
            doorbells.ring(rank + 1, bell)
            mx.eval(mx.distributed.send(out, rank + 1, group=group))
