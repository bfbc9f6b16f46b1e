"""The native decode step computes what the MLX model computes: logits at every position
of a prompt fed one token at a time match the model's forward pass over the whole prompt,
for the bundled model (interleaved RoPE, tied head) and a random llama (rotate-half
RoPE, its own head); models it does not compute are refused with the reason."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from exo.engine.mlx_engine import MlxEngine
from exo.engine.native_decode import NativeDecoder, NotSupported
from exo.models.bundled import ensure_bundled_model
from tests.engine.test_architectures import tiny_model

PROMPT = [1, 504, 3458, 282, 4193, 314, 2114, 30, 216, 23, 18, 9, 7, 3, 11, 12]


def assert_same_logits(model: nn.Module, tokens: list[int], tolerance: float) -> None:
    whole = model(mx.array([tokens]))[0].astype(mx.float32)
    mx.eval(whole)
    expected = np.array(whole)
    decoder = NativeDecoder(model, 64)
    for position, token in enumerate(tokens):
        got = decoder.step(token)
        assert int(got.argmax()) == int(expected[position].argmax()), position
        np.testing.assert_allclose(got, expected[position], atol=tolerance, rtol=0)
    assert decoder.position == len(tokens)


def test_the_bundled_model_step_by_step_matches_its_forward_pass() -> None:
    with tempfile.TemporaryDirectory() as models:
        engine = MlxEngine.load(ensure_bundled_model(Path(models)), 0, 30)
    assert_same_logits(engine.full_model, PROMPT, 1e-3)


def test_a_llama_with_rotate_half_rope_and_its_own_head_matches() -> None:
    model = tiny_model("llama", tie_word_embeddings=False)
    assert not cast(Any, model).model.layers[0].self_attn.rope.traditional
    assert_same_logits(model, [t % 256 for t in PROMPT], 1e-4)


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("qwen3", "architecture 'qwen3'"),  # norms on q and k
        ("gemma", "architecture 'gemma'"),
    ],
)
def test_other_architectures_are_refused_with_the_reason(case: str, why: str) -> None:
    with pytest.raises(NotSupported, match=why):
        NativeDecoder(tiny_model(case), 16)


def test_quantized_weights_and_a_full_cache_are_refused() -> None:
    with pytest.raises(NotSupported, match="quantized"):
        NativeDecoder(tiny_model("llama", quantized=True, dequantize=False), 16)
    decoder = NativeDecoder(tiny_model("llama"), 2)
    decoder.step(1)
    decoder.step(2)
    with pytest.raises(ValueError, match="holds 2 positions"):
        decoder.step(3)
