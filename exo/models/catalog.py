"""Short names for widely used mlx-community models: aliases of their hub repo ids.

Everything placement needs about them is read from the repo itself when one is first
asked for (`exo.models.hub`), so this table holds names only.
"""

from __future__ import annotations

ALIASES: dict[str, str] = {
    "llama-3.2-1b": "mlx-community/Llama-3.2-1B-Instruct-4bit",
    "llama-3.2-3b": "mlx-community/Llama-3.2-3B-Instruct-4bit",
    "llama-3.1-8b": "mlx-community/Meta-Llama-3.1-8B-Instruct-4bit",
    "llama-3.3-70b": "mlx-community/Llama-3.3-70B-Instruct-4bit",
    "qwen3-0.6b": "mlx-community/Qwen3-0.6B-4bit",
    "qwen3-8b": "mlx-community/Qwen3-8B-4bit",
    "qwen3-32b": "mlx-community/Qwen3-32B-4bit",
    "qwen3-30b-a3b": "mlx-community/Qwen3-30B-A3B-4bit",
    "mistral-7b": "mlx-community/Mistral-7B-Instruct-v0.3-4bit",
    "gemma-3-4b": "mlx-community/gemma-3-4b-it-4bit",
    "phi-4-mini": "mlx-community/Phi-4-mini-instruct-4bit",
    "deepseek-v3": "mlx-community/DeepSeek-V3-0324-4bit",
    "gpt-oss-20b": "mlx-community/gpt-oss-20b-MXFP4-Q8",
    "gpt-oss-120b": "mlx-community/gpt-oss-120b-MXFP4-Q8",
}
