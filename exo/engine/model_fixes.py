"""Fixes to mlx-lm's model code that exo needs and the mlx-lm it runs (0.32.2) lacks.

Each fix is checked by the tests that found it; drop it once mlx-lm has its own.

- gemma2 with more query heads than key-value heads reshapes its scores to
  `[batch, kv_heads, repeats, queries, keys]` but applies a mask shaped
  `[batch, 1, queries, keys]`: fine for one sequence (the batch dimension broadcasts),
  a broadcast error for two or more, so a batch of gemma2 requests failed. The mask gets
  the missing `repeats` axis.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx


def install() -> None:
    """Apply every fix (again is harmless)."""
    _gemma2_batch_masks()


def _gemma2_batch_masks() -> None:
    from mlx_lm.models import gemma2

    attention: Any = gemma2.Attention
    if getattr(attention.__call__, "exo_fixed", False):
        return
    original = attention.__call__

    def call(self: Any, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        if isinstance(mask, mx.array) and mask.ndim == 4 and self.repeats > 1:
            mask = mx.expand_dims(mask, 2)
        return original(self, x, mask, cache)

    call.exo_fixed = True  # type: ignore[attr-defined]
    attention.__call__ = call
