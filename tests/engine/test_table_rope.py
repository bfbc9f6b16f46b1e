"""Table RoPE gives exactly MLX's rotation: every layout, offsets as ints and per
sequence, rotary dims narrower than the head, and the same greedy replies on the model."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models.cache import make_prompt_cache

from exo.engine import table_rope
from exo.engine.mlx_engine import MlxEngine
from exo.engine.table_rope import TableRoPE


@pytest.mark.parametrize("traditional", [True, False])
@pytest.mark.parametrize(("dims", "head"), [(64, 64), (32, 64), (128, 128)])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_the_rotation_equals_mlx_bit_for_bit(
    traditional: bool, dims: int, head: int, scale: float
) -> None:
    rope = nn.RoPE(dims, traditional=traditional, base=10000.0, scale=scale)
    tabled = TableRoPE(rope, positions=600)
    # One sequence decoding one token (the tables), then a batch and a prompt chunk
    # (handed to mx.fast.rope).
    for shape in ((1, 5, 1, head), (3, 5, 1, head), (1, 5, 7, head)):
        x = mx.random.normal(shape, key=mx.random.key(dims + head + shape[0] + shape[2]))
        for offset in (0, 1, 250, 599 - shape[2]):
            assert mx.array_equal(tabled(x, offset=offset), rope(x, offset=offset)), offset
        # mlx-lm's batches pass an array of offsets, which nn.RoPE's annotation leaves out.
        per_sequence = mx.array([411, 3, 17][: shape[0]])
        expected = rope(x, offset=per_sequence)  # type: ignore[arg-type]
        assert mx.array_equal(tabled(x, offset=per_sequence), expected), shape


def test_the_tables_are_used_for_one_row_and_only_then() -> None:
    rope = nn.RoPE(64, traditional=True, base=10000.0)
    tabled = TableRoPE(rope, positions=64)
    tabled(mx.zeros((2, 3, 1, 64)), offset=5)
    tabled(mx.zeros((1, 3, 4, 64)), offset=5)
    assert tabled._tables is None
    tabled(mx.zeros((1, 3, 1, 64)), offset=5)
    assert tabled._tables is not None


def test_beyond_the_tables_it_is_mlx_rope_itself() -> None:
    rope = nn.RoPE(64, traditional=False, base=10000.0)
    tabled = TableRoPE(rope, positions=16)
    x = mx.random.normal((1, 2, 1, 64), key=mx.random.key(1))
    assert mx.array_equal(tabled(x, offset=16), rope(x, offset=16))
    assert tabled._tables is None


def test_a_padded_position_reads_row_zero_without_failing() -> None:
    # A batch's left padding puts its (masked) pad tokens at negative positions.
    rope = nn.RoPE(64, traditional=True, base=10000.0)
    tabled = TableRoPE(rope, positions=64)
    x = mx.random.normal((1, 2, 1, 64), key=mx.random.key(2))
    assert mx.array_equal(tabled(x, offset=mx.array([-2])), rope(x, offset=0))


def test_the_tables_are_not_parameters() -> None:
    tabled = TableRoPE(nn.RoPE(64), positions=32)
    tabled(mx.zeros((1, 1, 1, 64)))
    assert tabled.parameters() == {}


def test_the_engine_rotates_with_tables_on_cpu_and_decodes_the_same(model_dir: Path) -> None:
    engine = MlxEngine.load(model_dir, 0, 30)
    model = engine.model
    ropes = [layer.self_attn.rope for layer in model.model.layers]  # type: ignore[attr-defined]
    assert all(isinstance(r, TableRoPE) for r in ropes)
    assert len({id(r) for r in ropes}) == 1  # one set of tables for the 30 alike layers
    assert engine.info.context_length == ropes[0].positions

    def greedy(steps: int) -> list[mx.array]:
        """The logits of a prompt and of `steps` greedy tokens after it."""
        cache = make_prompt_cache(model)
        logits = [model(mx.array([[1, 504, 3458, 282, 4649, 47]]), cache=cache)[:, -1, :]]
        for _ in range(steps):
            token = mx.argmax(logits[-1], axis=-1)
            logits.append(model(token[None], cache=cache)[:, -1, :])
        return logits

    with_tables = greedy(24)
    assert ropes[0]._tables is not None  # the decode steps read the tables
    for layer, rope in zip(model.model.layers, ropes, strict=True):  # type: ignore[attr-defined]
        layer.self_attn.rope = nn.RoPE(
            rope.dims, traditional=rope.traditional, base=rope.base, scale=rope.scale
        )
    with_mlx_rope = greedy(24)
    assert all(mx.array_equal(a, b) for a, b in zip(with_tables, with_mlx_rope, strict=True))
    assert table_rope.install(model, positions=64) == 30
