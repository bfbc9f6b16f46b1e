"""Which mlx-lm architectures exo can shard, from a config.json alone, without MLX.

The node process never imports MLX, yet it must refuse a model it cannot place before a
runner tries (and fails) to load it. This table is that knowledge: every model type here
has been checked by `tests/engine/test_architectures.py`, which cuts tiny random-weight
models of each with the runner's own functions (`exo.engine.pipeline.keep_layers`) and
compares 2- and 3-rank pipelines, and mlx-lm's tensor sharding where the table says it
exists, against the whole model. The same tests check the table against mlx-lm's real
classes (module names, `shard`), so it cannot drift from the installed mlx-lm unnoticed.

`exo.engine.pipeline` reads the per-architecture facts it needs (how the inner model
scales its embeddings, what its parts are called) from here too, so there is one table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# How the inner model scales the embeddings right after looking them up. A later pipeline
# rank hands it hidden states instead of token embeddings, and must undo that scaling.
EmbedScale = Literal["sqrt_hidden", "sqrt_hidden_bf16", "embedding_multiplier", "scale_emb"]

_DENSE_TENSOR = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


@dataclass(frozen=True)
class Architecture:
    """How exo shards one mlx-lm model module (`mlx_lm.models.<module>`)."""

    module: str
    # mlx-lm implements `Model.shard(group)` (tensor parallelism) for it.
    tensor: bool
    embed_scale: EmbedScale | None = None
    # Config fields that tensor parallelism splits evenly across the ranks.
    tensor_split: tuple[str, ...] = _DENSE_TENSOR
    # Attribute names: the inner model on the outer one, and on the inner model the token
    # embedding, the final norm; the head on the outer model (absent: tied embeddings).
    inner: str = "model"
    embed: str = "embed_tokens"
    norm: str = "norm"
    head: str = "lm_head"


ARCHITECTURES: Mapping[str, Architecture] = {
    a.module: a
    for a in (
        Architecture("llama", tensor=True),
        Architecture("qwen2", tensor=True),
        Architecture("qwen3", tensor=True),
        Architecture("phi3", tensor=False),
        Architecture("gemma", tensor=False, embed_scale="sqrt_hidden"),
        Architecture("gemma2", tensor=False, embed_scale="sqrt_hidden"),
        Architecture("gemma3_text", tensor=False, embed_scale="sqrt_hidden_bf16"),
        Architecture("granite", tensor=False, embed_scale="embedding_multiplier"),
        Architecture("minicpm", tensor=False, embed_scale="scale_emb"),
        Architecture("mixtral", tensor=False),
        Architecture("qwen2_moe", tensor=False),
        Architecture(
            "qwen3_moe",
            tensor=True,
            tensor_split=(*_DENSE_TENSOR, "moe_intermediate_size"),
        ),
        Architecture("gpt_oss", tensor=True),
        Architecture(
            "deepseek_v3",
            tensor=True,
            tensor_split=("num_attention_heads", "intermediate_size", "moe_intermediate_size"),
        ),
    )
}
"""The verified architectures, by mlx-lm module name."""

# Model types mlx-lm loads with another architecture's module (a subset of
# `mlx_lm.utils.MODEL_REMAPPING`: those whose module is in ARCHITECTURES).
ALIASES: Mapping[str, str] = {
    "mistral": "llama",
    "iquestcoder": "llama",
    "xverse": "llama",
    "kimi_k2": "deepseek_v3",
    "joyai_llm_flash": "deepseek_v3",
}

UNSUPPORTED: Mapping[str, str] = {
    "gemma3": (
        "a multimodal checkpoint keeps its text model's settings in text_config, which exo "
        "does not load; use the text-only (gemma3_text) checkpoint"
    ),
    "gemma3n": "its layers read per-layer embeddings of the token ids, which a later rank never sees",
    **dict.fromkeys(
        (
            "qwen3_next",
            "qwen3_5",
            "qwen3_5_moe",
            "mamba",
            "mamba2",
            "jamba",
            "falcon_h1",
            "nemotron_h",
            "granitemoehybrid",
            "lfm2",
            "lfm2_moe",
            "kimi_linear",
            "recurrent_gemma",
            "rwkv7",
            "plamo2",
            "bailing_moe_linear",
            "olmo_hybrid",
        ),
        "its recurrent or linear-attention layers keep a state other than a key-value cache, "
        "which exo's pipeline cannot keep in step on the ranks that skip those layers",
    ),
}
"""mlx-lm modules known not to work cut by layer range, and why (for the refusal)."""


def module_of(config: Mapping[str, Any]) -> str:
    """The mlx-lm module a config.json's `model_type` runs as ('' when it has none)."""
    model_type = str(config.get("model_type") or "")
    return ALIASES.get(model_type, model_type)


def architecture_of(config: Mapping[str, Any]) -> Architecture | None:
    """The table's entry for this config, or None when exo has not verified it."""
    return ARCHITECTURES.get(module_of(config))


def pipeline_refusal(config: Mapping[str, Any], ranks: int | None = None) -> str | None:
    """Why exo cannot pipeline-shard this model (over `ranks` ranks), or None if it can."""
    model_type = str(config.get("model_type") or "")
    if not model_type:
        return "config.json has no model_type"
    module = module_of(config)
    if module not in ARCHITECTURES:
        why = UNSUPPORTED.get(module) or (
            "exo has not verified cutting this mlx-lm model by layer range "
            f"(verified: {', '.join(supported_model_types())})"
        )
        return f"architecture {model_type!r} cannot be pipeline-sharded: {why}"
    if ranks is not None:
        layers = int(config.get("num_hidden_layers") or 0)
        if ranks > layers:
            return (
                f"{ranks} pipeline ranks need at least {ranks} layers; {model_type!r} has {layers}"
            )
    return None


def tensor_refusal(config: Mapping[str, Any], ranks: int | None = None) -> str | None:
    """Why exo cannot tensor-shard this model (over `ranks` ranks), or None if it can."""
    model_type = str(config.get("model_type") or "")
    if not model_type:
        return "config.json has no model_type"
    arch = architecture_of(config)
    if arch is None:
        return (
            f"architecture {model_type!r} cannot be tensor-sharded: exo has not verified it "
            f"(verified: {', '.join(supported_model_types(tensor=True))})"
        )
    if not arch.tensor:
        return (
            f"architecture {model_type!r} cannot be tensor-sharded: mlx-lm has no "
            "tensor-parallel sharding for it; place it with the pipeline strategy"
        )
    if ranks is not None and ranks > 1:
        for field in arch.tensor_split:
            value = config.get(field)
            if field == "num_key_value_heads" and value is None:
                value = config.get("num_attention_heads")
            if value is not None and int(value) % ranks:
                return (
                    f"{model_type!r} cannot be tensor-sharded over {ranks} ranks: "
                    f"{field} = {value} does not split evenly"
                )
    return None


def supported_model_types(tensor: bool = False) -> list[str]:
    """Every model type (aliases included) exo can pipeline-shard, or tensor-shard."""
    names = [m for m, a in ARCHITECTURES.items() if a.tensor or not tensor]
    names += [alias for alias, m in ALIASES.items() if ARCHITECTURES[m].tensor or not tensor]
    return sorted(names)
