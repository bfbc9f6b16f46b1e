"""Model cards for widely used mlx-community models: what placement and previews need
(layers, widths, heads, context, size), before any weight is fetched.

Architecture figures are those of each model's config.json on the hub; `weight_bytes`
is the size of the MLX repository's safetensors files, rounded (GB = 10^9 bytes). These
run quantized as stored on Metal and CUDA, so `loaded_bytes` equals `weight_bytes`.
Downloading them comes with a later issue; until then placing one fails at the download
step with a clear error, while previews work.
"""

from __future__ import annotations

from exo.events.ids import ModelId
from exo.models.cards import ModelCard

GB = 10**9


def _hub(
    model_id: str,
    name: str,
    repo: str,
    *,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    context: int,
    size_gb: float,
) -> ModelCard:
    size = int(size_gb * GB)
    return ModelCard(
        model_id=ModelId(model_id),
        display_name=name,
        source="hub",
        location=repo,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        vocab_size=vocab,
        context_length=context,
        weight_bytes=size,
        loaded_bytes=size,
    )


LLAMA_VOCAB = 128256
QWEN3_VOCAB = 151936

HUB_CARDS: tuple[ModelCard, ...] = (
    _hub(
        "llama-3.2-1b",
        "Llama 3.2 1B Instruct (4-bit)",
        "mlx-community/Llama-3.2-1B-Instruct-4bit",
        layers=16,
        hidden=2048,
        heads=32,
        kv_heads=8,
        vocab=LLAMA_VOCAB,
        context=131072,
        size_gb=0.7,
    ),
    _hub(
        "llama-3.2-3b",
        "Llama 3.2 3B Instruct (4-bit)",
        "mlx-community/Llama-3.2-3B-Instruct-4bit",
        layers=28,
        hidden=3072,
        heads=24,
        kv_heads=8,
        vocab=LLAMA_VOCAB,
        context=131072,
        size_gb=1.8,
    ),
    _hub(
        "llama-3.1-8b",
        "Llama 3.1 8B Instruct (4-bit)",
        "mlx-community/Meta-Llama-3.1-8B-Instruct-4bit",
        layers=32,
        hidden=4096,
        heads=32,
        kv_heads=8,
        vocab=LLAMA_VOCAB,
        context=131072,
        size_gb=4.5,
    ),
    _hub(
        "llama-3.3-70b",
        "Llama 3.3 70B Instruct (4-bit)",
        "mlx-community/Llama-3.3-70B-Instruct-4bit",
        layers=80,
        hidden=8192,
        heads=64,
        kv_heads=8,
        vocab=LLAMA_VOCAB,
        context=131072,
        size_gb=39.7,
    ),
    _hub(
        "qwen3-0.6b",
        "Qwen3 0.6B (4-bit)",
        "mlx-community/Qwen3-0.6B-4bit",
        layers=28,
        hidden=1024,
        heads=16,
        kv_heads=8,
        vocab=QWEN3_VOCAB,
        context=40960,
        size_gb=0.34,
    ),
    _hub(
        "qwen3-8b",
        "Qwen3 8B (4-bit)",
        "mlx-community/Qwen3-8B-4bit",
        layers=36,
        hidden=4096,
        heads=32,
        kv_heads=8,
        vocab=QWEN3_VOCAB,
        context=40960,
        size_gb=4.6,
    ),
    _hub(
        "qwen3-32b",
        "Qwen3 32B (4-bit)",
        "mlx-community/Qwen3-32B-4bit",
        layers=64,
        hidden=5120,
        heads=64,
        kv_heads=8,
        vocab=QWEN3_VOCAB,
        context=40960,
        size_gb=18.4,
    ),
    _hub(
        "mistral-7b",
        "Mistral 7B Instruct v0.3 (4-bit)",
        "mlx-community/Mistral-7B-Instruct-v0.3-4bit",
        layers=32,
        hidden=4096,
        heads=32,
        kv_heads=8,
        vocab=32768,
        context=32768,
        size_gb=4.1,
    ),
    _hub(
        "deepseek-v3",
        "DeepSeek V3 0324 (4-bit)",
        "mlx-community/DeepSeek-V3-0324-4bit",
        layers=61,
        hidden=7168,
        heads=128,
        kv_heads=128,
        vocab=129280,
        context=163840,
        size_gb=378.0,
    ),
    _hub(
        "gpt-oss-20b",
        "gpt-oss 20B (MXFP4)",
        "mlx-community/gpt-oss-20b-MXFP4-Q8",
        layers=24,
        hidden=2880,
        heads=64,
        kv_heads=8,
        vocab=201088,
        context=131072,
        size_gb=12.1,
    ),
    _hub(
        "gpt-oss-120b",
        "gpt-oss 120B (MXFP4)",
        "mlx-community/gpt-oss-120b-MXFP4-Q8",
        layers=36,
        hidden=2880,
        heads=64,
        kv_heads=8,
        vocab=201088,
        context=131072,
        size_gb=65.3,
    ),
)
