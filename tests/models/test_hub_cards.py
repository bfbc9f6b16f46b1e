"""Cards read from a repo's own files (`exo.models.hub`): pure, from synthetic snapshots."""

from __future__ import annotations

import attrs
import pytest

from exo.events.ids import ModelId
from exo.models.hub import (
    NotAModel,
    RepoFile,
    RepoSnapshot,
    TensorEntry,
    card_from_snapshot,
    files_for_layers,
    model_id_for,
    parse_model_name,
)

QWEN3 = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "num_hidden_layers": 4,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "quantization": {"group_size": 64, "bits": 4},
}
KNOWN = frozenset({"qwen3", "llama"})


def quantized(prefix: str, file: str, out: int, inp: int) -> list[TensorEntry]:
    """A 4-bit affine linear as MLX stores it: packed uint32 weight, scales, biases."""
    words, groups = inp * 4 // 32, inp // 64
    return [
        TensorEntry(f"{prefix}.weight", file, "U32", (out, words), out * words * 4),
        TensorEntry(f"{prefix}.scales", file, "F16", (out, groups), out * groups * 2),
        TensorEntry(f"{prefix}.biases", file, "F16", (out, groups), out * groups * 2),
    ]


def snapshot(files: int = 2) -> RepoSnapshot:
    """Layers 0-1 and the embeddings in the first file, layers 2-3 and the norm in the last."""
    names = [f"model-{i + 1:05d}-of-{files:05d}.safetensors" for i in range(files)]
    tensors = quantized("model.embed_tokens", names[0], 151936, 1024)
    for layer in range(4):
        file = names[min(layer * files // 4, files - 1)]
        tensors += quantized(f"model.layers.{layer}.self_attn.q_proj", file, 2048, 1024)
    tensors.append(TensorEntry("model.norm.weight", names[-1], "F16", (1024,), 2048))
    sizes = {n: sum(t.nbytes for t in tensors if t.file == n) for n in names}
    repo_files = tuple(RepoFile(n, sizes[n], f"{i:064x}") for i, n in enumerate(names))
    support = tuple(
        RepoFile(n, 100)
        for n in ("config.json", "tokenizer.json", "tokenizer_config.json", "README.md")
    )
    return RepoSnapshot(
        "mlx-community/Qwen3-0.6B-4bit",
        "a" * 40,
        (*repo_files, *support, RepoFile("model.safetensors.index.json", 100)),
        QWEN3,
        tuple(tensors),
        {t.name: t.file for t in tensors},
        "2025-05-01T10:00:00+00:00",
    )


def test_a_card_reads_widths_quantization_and_bytes_per_layer_from_the_repo() -> None:
    snap = snapshot()
    card = card_from_snapshot(
        ModelId("mlx-community/Qwen3-0.6B-4bit"), snap, known_architectures=KNOWN
    )
    assert (card.architecture, card.num_layers, card.hidden_size) == ("qwen3", 4, 1024)
    assert (card.num_heads, card.num_kv_heads, card.kv_head_dim) == (16, 8, 128)
    assert (card.context_length, card.vocab_size, card.revision) == (40960, 151936, "a" * 40)
    assert card.quantization is not None and (
        card.quantization.bits,
        card.quantization.group_size,
    ) == (4, 64)
    layer = sum(t.nbytes for t in snap.tensors if ".layers.0." in t.name)
    assert card.layer_bytes == (layer,) * 4
    assert card.shared_bytes == sum(t.nbytes for t in snap.tensors if ".layers." not in t.name)
    assert card.weight_bytes == sum(t.nbytes for t in snap.tensors)
    # Unpacked parameters: 4-bit packs 8 values a word; scales and biases count nothing.
    assert card.parameters == 151936 * 1024 + 4 * 2048 * 1024 + 1024
    assert card.loaded_bytes == card.parameters * 4
    assert card.support_files == (
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    )
    assert len(card.digest) == 64 and card.modified.startswith("2025-05-01")
    # A rank of layers [1, 3) holds those layers and the shared tensors every rank builds.
    assert card.stored_bytes(1, 3) == 2 * layer + card.shared_bytes


def test_a_shard_fetches_only_the_files_holding_its_layers() -> None:
    card = card_from_snapshot(ModelId("m/q"), snapshot(files=4), known_architectures=KNOWN)
    first, second, third, last = (f.name for f in card.weight_files)
    assert [f.roles for f in card.weight_files] == [("embedding",), (), (), ("head",)]
    assert card.tied_embeddings  # no lm_head tensor: the head is the embedding
    support = set(card.support_files)
    # Rank 0 embeds; a middle rank needs only its layers; the last rank needs the final
    # norm and, the head being tied, the embedding.
    assert set(files_for_layers(card, 0, 1)) == support | {first}
    assert set(files_for_layers(card, 1, 2)) == support | {second}
    assert set(files_for_layers(card, 2, 4)) == support | {first, third, last}
    assert set(files_for_layers(card, 0, 4)) == support | {first, second, third, last}
    # With its own head, the last rank leaves the embedding to rank 0.
    untied = attrs.evolve(card, tied_embeddings=False)
    assert set(files_for_layers(untied, 2, 4)) == support | {third, last}


def test_repos_exo_cannot_serve_are_refused_with_the_reason() -> None:
    snap = snapshot()
    without_weights = RepoSnapshot(
        snap.repo_id,
        snap.revision,
        tuple(f for f in snap.files if "safetensors" not in f.name),
        QWEN3,
    )
    with pytest.raises(NotAModel, match="no safetensors weights"):
        card_from_snapshot(ModelId("m/q"), without_weights, known_architectures=KNOWN)
    unknown = RepoSnapshot(snap.repo_id, snap.revision, snap.files, {**QWEN3, "model_type": "nope"})
    with pytest.raises(NotAModel, match="architecture 'nope' is not one mlx-lm supports"):
        card_from_snapshot(ModelId("m/q"), unknown, known_architectures=KNOWN)
    no_layers = RepoSnapshot(
        snap.repo_id, snap.revision, snap.files, {"model_type": "qwen3", "hidden_size": 8}
    )
    with pytest.raises(NotAModel, match=r"config\.json has no num_hidden_layers"):
        card_from_snapshot(ModelId("m/q"), no_layers, known_architectures=KNOWN)


def test_without_headers_the_card_estimates_from_file_sizes() -> None:
    snap = snapshot()
    bare = RepoSnapshot(snap.repo_id, snap.revision, snap.files, QWEN3, (), snap.weight_map)
    card = card_from_snapshot(ModelId("m/q"), bare, known_architectures=KNOWN)
    weights = sum(f.size for f in snap.files if f.name.endswith(".safetensors"))
    assert card.layer_bytes == () and card.weight_bytes == weights
    assert card.stored_bytes(0, 2) == weights // 2  # a proportional share per layer
    assert card.parameters == weights * 8 // 4


def test_multimodal_configs_keep_the_language_model_under_text_config() -> None:
    config = {
        "model_type": "gemma3",
        "text_config": {
            "num_hidden_layers": 34,
            "hidden_size": 2560,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "vocab_size": 262208,
            "max_position_embeddings": 131072,
        },
    }
    snap = RepoSnapshot("g/g", "b" * 40, (RepoFile("model.safetensors", 10),), config)
    card = card_from_snapshot(ModelId("g/g"), snap, known_architectures=frozenset({"gemma3"}))
    assert (card.num_layers, card.hidden_size, card.kv_head_dim) == (34, 2560, 256)


def test_names_of_hub_models() -> None:
    assert parse_model_name("mlx-community/Qwen3-0.6B-4bit") == (
        "mlx-community/Qwen3-0.6B-4bit",
        None,
    )
    assert parse_model_name("org/name@v1.0") == ("org/name", "v1.0")
    for bad in ("smollm2-135m", "a/b/c", "org/na--me", "/name", "org/", "o/n@..x y"):
        assert parse_model_name(bad) is None, bad
    assert model_id_for("org/name", None) == "org/name"
    assert model_id_for("org/name", "main") == "org/name"
    assert model_id_for("org/name", "abc123") == "org/name@abc123"
