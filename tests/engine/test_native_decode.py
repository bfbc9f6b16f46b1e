"""The native decode step computes what the MLX model computes: logits at every position
of a prompt fed one token at a time match the model's forward pass over the whole prompt,
for the bundled model (interleaved RoPE, tied head) and a random llama (rotate-half
RoPE, its own head); models it does not compute are refused with the reason."""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from exo.engine.blas import cpu_flags
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


def odd_widths() -> nn.Module:
    """A llama whose hidden, head and MLP widths and vocabulary are not multiples of the
    kernel's vectors (16 or 8 floats): the products' scalar tails and partial blocks."""
    return tiny_model("llama", hidden_size=72, head_dim=18, intermediate_size=100, vocab_size=251)


def test_widths_that_are_not_whole_vectors_match() -> None:
    assert_same_logits(odd_widths(), [t % 251 for t in PROMPT], 1e-4)


@pytest.mark.skipif(
    platform.machine() != "x86_64" or "avx2" not in cpu_flags(),
    reason="builds the AVX2 variant, which this CPU must run",
)
def test_the_avx2_build_computes_what_this_cpus_build_does(tmp_path: Path) -> None:
    """Without AVX-512 the kernel keeps 8-float vectors and narrower blocks (others
    spill); on an AVX-512 machine this builds that variant too and compares."""
    from exo.engine.native_decode import library_for

    model = odd_widths()
    mine = NativeDecoder(model, 16, slots=8)
    avx2 = NativeDecoder(model, 16, slots=8, kernel=library_for("x86-64-v3", tmp_path))
    for position in range(4):
        for rows in (1, 3, 8):
            args = ([7 + r for r in range(rows)], [position] * rows, list(range(rows)))
            np.testing.assert_allclose(avx2.step_rows(*args), mine.step_rows(*args), atol=1e-5)


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


@pytest.mark.parametrize("threads", [1, 3])
def test_several_sequences_in_one_call_are_each_alone(threads: int) -> None:
    """Rows of different lengths fed together (each matrix read once for all) give each
    sequence exactly the logits it gets fed alone, on any number of threads: a row's sums
    are added in the same order whatever else is in the step."""
    model = tiny_model("llama")
    prompts = [[3, 7, 11, 19, 23], [5, 2], [13, 17, 29, 31, 37, 41, 43]]
    alone = []
    for prompt in prompts:
        decoder = NativeDecoder(model, 16, threads=2)
        alone.append([decoder.step(t).copy() for t in prompt])
    together = NativeDecoder(model, 16, slots=4, threads=threads)
    slots = [2, 0, 3]  # any free slots, in any order
    for position in range(max(len(p) for p in prompts)):
        rows = [r for r, p in enumerate(prompts) if position < len(p)]
        logits = together.step_rows(
            [prompts[r][position] for r in rows], [position] * len(rows), [slots[r] for r in rows]
        )
        for got, r in zip(logits, rows, strict=True):
            np.testing.assert_array_equal(got, alone[r][position])
    with pytest.raises(ValueError, match="twice"):
        together.step_rows([1, 2], [0, 0], [1, 1])
    # Slot 2's cache as mlx-lm's, then back into another decoder: it goes on the same,
    # also after slot 2's memory went back to the OS.
    length = len(prompts[0])
    cache = together.mlx_cache(slot=2, length=length)
    expected = together.step_rows([9], [length], [2])[0].copy()
    together.release(2)
    again = NativeDecoder(model, 16)
    again.load_cache(cache, length)
    np.testing.assert_allclose(again.step(9), expected, atol=1e-5, rtol=0)


def test_loading_the_kernel_keeps_subnormal_floats() -> None:
    """A library built with -ffast-math would set flush-to-zero for the whole process
    (numpy, MLX and every test after it) when loaded."""
    from exo.engine.native_decode import library

    library()
    tiny = np.array([1e-39], dtype=np.float32) * np.float32(0.5)
    assert tiny[0] != 0.0


def test_a_runner_without_memory_for_the_slots_decodes_with_mlx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exo.engine import native_decode, native_lanes

    info = SimpleNamespace(device="cpu", dtype="float32", context_length=64)
    engine = SimpleNamespace(group=None, model=tiny_model("llama"), info=info)
    assert native_lanes.native_decoder_for(engine, 2) is not None
    info.device = "gpu"
    assert native_lanes.native_decoder_for(engine, 2) is None
    info.device = "cpu"

    def no_memory(*_: object) -> object:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(native_decode.mmap, "mmap", no_memory)
    assert native_lanes.native_decoder_for(engine, 2) is None
