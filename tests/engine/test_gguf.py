"""The bundled GGUF converts into a directory mlx-lm loads and answers correctly with."""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs
import pytest
from tokenizers import Tokenizer

from exo.models import bundled
from exo.models.cards import BUNDLED_MODEL, CARDS
from exo.models.gguf import MARKER_NAME, convert_gguf


def test_config_describes_smollm2(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9
    assert config["num_key_value_heads"] == 3
    assert config["intermediate_size"] == 1536
    assert config["vocab_size"] == 49152
    assert config["rms_norm_eps"] == 1e-5
    assert config["rope_theta"] == 100000.0
    assert config["max_position_embeddings"] == 8192
    assert config["tie_word_embeddings"] is True
    assert config["rope_traditional"] is True
    # Q4_1 matrices everywhere except the Q8_0 token embedding.
    quantization = config["quantization"]
    assert (quantization["group_size"], quantization["bits"]) == (32, 4)
    assert quantization["model.embed_tokens"] == {"group_size": 32, "bits": 8, "mode": "affine"}


def test_weights_keep_the_gguf_quantization(model_dir: Path) -> None:
    import mlx.core as mx

    weights = mx.load(str(model_dir / "model.safetensors"))
    assert isinstance(weights, dict)
    q = "model.layers.0.self_attn.q_proj"
    assert weights[f"{q}.weight"].dtype == mx.uint32
    assert weights[f"{q}.weight"].shape[1] // weights[f"{q}.scales"].shape[1] == 4
    embed = "model.embed_tokens"
    assert weights[f"{embed}.weight"].shape[1] // weights[f"{embed}.scales"].shape[1] == 8
    assert "model.norm.weight" in weights
    assert "model.layers.29.post_attention_layernorm.weight" in weights
    assert not any(name.startswith("lm_head") for name in weights)


def test_tokenizer_round_trips(model_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tokenizer.encode("Hello world").ids
    assert ids == [19556, 905]
    assert tokenizer.decode(ids) == "Hello world"
    text = "Café: 12 naïve 🙂 tokens\n  indented"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    # Special tokens are single ids and survive decoding when asked for.
    special = tokenizer.encode("<|im_start|>user").ids
    assert special[0] == 1
    assert tokenizer.decode(special, skip_special_tokens=False) == "<|im_start|>user"


def test_chat_template_renders_chatml(model_dir: Path) -> None:
    import mlx_lm

    _, tokenizer = mlx_lm.load(str(model_dir))  # type: ignore[misc]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user\nHi<|im_end|>\n" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"
    assert 2 in tokenizer.eos_token_ids


def test_mlx_lm_answers_the_capital_question(model_dir: Path) -> None:
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = mlx_lm.load(str(model_dir))  # type: ignore[misc]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        add_generation_prompt=True,
    )
    text = "".join(
        r.text
        for r in mlx_lm.stream_generate(
            model, tokenizer, prompt, max_tokens=16, sampler=make_sampler(0.0)
        )
    )
    assert "Paris" in text


def test_ensure_bundled_model_reuses_a_complete_conversion(model_dir: Path) -> None:
    marker = model_dir / MARKER_NAME
    before = marker.stat().st_mtime_ns
    assert bundled.ensure_bundled_model(model_dir.parent) == model_dir
    assert marker.stat().st_mtime_ns == before


def test_ensure_bundled_model_replaces_an_incomplete_one(tmp_path: Path) -> None:
    partial = tmp_path / "smollm2-135m"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    out = bundled.ensure_bundled_model(tmp_path)
    assert out == partial
    assert (out / MARKER_NAME).is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]


def test_convert_refuses_to_overwrite(model_dir: Path) -> None:
    with pytest.raises(FileExistsError):
        convert_gguf(bundled.bundled_gguf(), model_dir)


def test_missing_package_names_the_fix() -> None:
    card = attrs.evolve(CARDS[BUNDLED_MODEL], location="no_such_package_xyz/model.gguf")
    with pytest.raises(bundled.BundledModelMissing, match=re.escape(bundled.INSTALL_HINT)):
        bundled.bundled_gguf(card)
