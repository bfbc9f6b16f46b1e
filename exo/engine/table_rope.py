"""Rotary position embedding from tables, for models running on a CPU.

Why: on MLX's CPU backend `mx.fast.rope` builds its rotation from about twenty small ops
on every call (positions, inverse frequencies, exp, cos, sin, slices, concatenation),
and every op costs about 10 µs there whatever its size. A decode step calls it twice per
layer: 10.7 of the bundled model's ~57 ms per token (benchmarks/cpu_decode.py). The
same rotation from precomputed tables is six ops:

    out = x * cos[positions] + (x @ R) * sin[positions]

with `R` the signed permutation that maps each rotated pair (x1, x2) to (-x2, x1). The
tables hold the exact float32 values MLX's own formula gives, and `x @ R` multiplies by
±1 and adds zeros, so the result equals `mx.fast.rope`'s bit for bit
(tests/engine/test_table_rope.py).

Only a single row per head (one sequence decoding one token) takes the tables: for a
batch or a prompt chunk `mx.fast.rope` is as fast or faster (8 sequences: 185 µs a call
against 364 µs with tables), so those calls go to it unchanged.

Only plain `nn.RoPE` modules are replaced (llama, qwen, mistral, gemma and their kin
without rope scaling or with linear scaling); scaled variants keep their own modules.
The tables cover the engine's context length, which no request may pass
(`MlxEngine.prepare`): rows x head_dim x 8 bytes, 4 MB for the bundled model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn


class TableRoPE(nn.Module):
    """`nn.RoPE` with its cosines and sines looked up instead of computed per call."""

    def __init__(self, rope: nn.RoPE, positions: int) -> None:
        super().__init__()
        self.dims = rope.dims
        self.traditional = rope.traditional
        self.base = rope.base
        self.scale = rope.scale
        self.positions = positions
        # Built at the first call, when the head width (which may exceed dims) is known.
        self._tables: tuple[mx.array, mx.array, mx.array] | None = None
        self.freeze()

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        length = x.shape[-2]
        beyond = isinstance(offset, int) and offset + length > self.positions
        if x.shape[0] != 1 or length != 1 or beyond:
            return mx.fast.rope(
                x,
                self.dims,
                traditional=self.traditional,
                base=self.base,
                scale=self.scale,
                offset=offset,
            )
        head = x.shape[-1]
        if self._tables is None or self._tables[0].shape[-1] != head:
            self._tables = rotation_tables(
                self.dims, head, self.traditional, self.base, self.scale, self.positions
            )
        cos, sin, rotate = self._tables
        if isinstance(offset, int):
            rows_cos, rows_sin = cos[offset], sin[offset]
        else:
            # A batch of one still passes its offset as an array. Left padding gives its
            # (masked) pad tokens negative positions; they read row 0.
            where = mx.clip(offset, 0, self.positions - 1)
            rows_cos, rows_sin = cos[where], sin[where]
        rotated = (x.reshape(-1, head) @ rotate).reshape(x.shape)
        return x * rows_cos + rotated * rows_sin


def rotation_tables(
    dims: int, head: int, traditional: bool, base: float, scale: float, positions: int
) -> tuple[mx.array, mx.array, mx.array]:
    """(cos, sin) of shape (positions, head) and the (head, head) pair rotation, in
    float32 as MLX computes them: theta = (position * scale) * exp(-i * ln(base) / half).
    Columns past `dims` pass through (cos 1, sin 0, no rotation)."""
    half = dims // 2
    inverse = mx.exp(
        mx.arange(0, -half, -1, dtype=mx.float32) * mx.array(math.log(base) / half, mx.float32)
    )
    theta = mx.expand_dims(mx.arange(positions, dtype=mx.float32) * scale, -1) * inverse
    cos, sin = mx.cos(theta), mx.sin(theta)
    if traditional:  # pairs (2i, 2i+1)
        cos = mx.repeat(cos, 2, axis=-1)
        sin = mx.repeat(sin, 2, axis=-1)
        first, second = list(range(0, dims, 2)), list(range(1, dims, 2))
    else:  # pairs (i, i + half)
        cos = mx.concatenate([cos, cos], axis=-1)
        sin = mx.concatenate([sin, sin], axis=-1)
        first, second = list(range(half)), list(range(half, dims))
    rest = head - dims
    if rest:
        cos = mx.concatenate([cos, mx.ones((positions, rest), mx.float32)], axis=-1)
        sin = mx.concatenate([sin, mx.zeros((positions, rest), mx.float32)], axis=-1)
    # (x @ R)[first] = -x[second], (x @ R)[second] = x[first]
    rotate = [[0.0] * head for _ in range(head)]
    for a, b in zip(first, second, strict=True):
        rotate[b][a] = -1.0
        rotate[a][b] = 1.0
    tables = (cos, sin, mx.array(rotate, dtype=mx.float32))
    mx.eval(*tables)
    return tables


def install(model: nn.Module, positions: int) -> int:
    """Replace every plain `nn.RoPE` in `model` by a `TableRoPE` covering `positions`;
    returns how many were replaced. Layers whose ropes are alike share one, so the
    tables exist once per model, not once per layer."""
    shared: dict[tuple[int, bool, float, float], TableRoPE] = {}

    def tabled(rope: nn.Module) -> nn.Module:
        assert isinstance(rope, nn.RoPE)
        alike = (rope.dims, rope.traditional, rope.base, rope.scale)
        if alike not in shared:
            shared[alike] = TableRoPE(rope, positions)
        return shared[alike]

    return swap(model, lambda child: type(child) is nn.RoPE, tabled)


def swap(
    model: nn.Module,
    matches: Callable[[nn.Module], bool],
    replacement: Callable[[nn.Module], nn.Module],
) -> int:
    """Replace every submodule of `model` that `matches` by its `replacement`; returns
    how many were replaced."""
    replaced = 0
    for _, module in model.named_modules():
        for name, child in list(module.children().items()):
            if isinstance(child, nn.Module) and matches(child):
                setattr(module, name, replacement(child))
                replaced += 1
    return replaced
