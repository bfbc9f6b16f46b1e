"""Model cards read from a repo's own files, and which files a shard needs. Pure.

A hub repo (or a local model directory in the same layout) describes itself: its
`config.json` gives the architecture and its widths, the safetensors headers give every
tensor's size and so the bytes of each decoder layer, the file list gives sizes and
hashes. `card_from_snapshot` turns that into a `ModelCard`; the I/O that gathers it
lives in `exo.models.hub_client`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatch
from typing import Any

from attrs import field, frozen

from exo.events.facts import ModelCard, ModelSource, Quantization, WeightFile
from exo.events.ids import ModelId, NodeId
from exo.events.state import State

# The hub's repo id rules: "owner/name", letters, digits, "-", "_", "."; no "--" or "..".
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
# A decoder layer's tensors, however the architecture prefixes them (model.layers.3.…,
# model.language_model.layers.3.…); the same rule mlx-lm's own sharded loader uses.
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Files every rank needs besides the weights (mlx-lm's own list, less custom code).
SUPPORT_PATTERNS = (
    "*.json",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
)
WEIGHT_SUFFIX = ".safetensors"
# mlx-lm architectures known under another model_type (mlx_lm.utils.MODEL_REMAPPING).
ARCHITECTURE_ALIASES = {
    "mistral": "llama",
    "llava": "mistral3",
    "phi-msft": "phixtral",
    "falcon_mamba": "mamba",
    "kimi_k2": "deepseek_v3",
    "qwen2_5_vl": "qwen2_vl",
    "minimax_m2": "minimax",
    "iquestcoder": "llama",
    "xverse": "llama",
}
_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
}


class NotAModel(ValueError):
    """The repo holds no model exo can run: no safetensors weights, an unknown
    architecture, a config without the fields placement needs."""


@frozen
class RepoFile:
    name: str
    size: int
    # The LFS sha256 (what the hub verifies large files by); "" for small git files.
    sha256: str = ""
    # The git blob id (sha1 of "blob <size>\0" + content); "" when unknown.
    blob_id: str = ""


@frozen
class TensorEntry:
    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@frozen
class RepoSnapshot:
    """Everything a card is made from, as read from the hub or from a directory."""

    repo_id: str
    revision: str
    files: tuple[RepoFile, ...]
    config: Mapping[str, Any]
    # Every tensor of every weight file; empty when the headers could not be read.
    tensors: tuple[TensorEntry, ...] = ()
    # tensor -> file from model.safetensors.index.json; empty for a single-file repo.
    weight_map: Mapping[str, str] = field(factory=dict)
    modified: str = ""


def parse_model_name(name: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) for "owner/name[@revision]", None if it is not one."""
    repo_id, _, revision = name.partition("@")
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        return None
    if revision and not _REVISION.match(revision):
        return None
    return repo_id, revision or None


def model_id_for(repo_id: str, revision: str | None) -> ModelId:
    """The name a hub model is served under: its repo id, with `@revision` unless main."""
    if revision is None or revision == "main":
        return ModelId(repo_id)
    return ModelId(f"{repo_id}@{revision}")


def tensor_role(tensor: str) -> str:
    """Which part of the model a tensor belongs to: "layer", "embedding", "head" (the
    final norm and the output head) or "other"."""
    if layer_of(tensor) is not None:
        return "layer"
    if "embed_tokens." in tensor or tensor.startswith(("wte.", "transformer.wte.")):
        return "embedding"
    parts = tensor.split(".")
    if parts[0] in ("lm_head", "output") or (len(parts) <= 3 and "norm" in parts[-2]):
        return "head"
    return "other"


def rank_needs(role: str, start: int, end: int, num_layers: int, tied: bool) -> bool:
    """Whether a pipeline rank holding layers [start, end) loads a non-layer tensor of
    this role: the embedding on rank 0 (and the last rank when the head is tied to it),
    the final norm and head on the last rank, anything else everywhere. The runner keeps
    exactly these (`exo.engine.pipeline.keep_layers`)."""
    first, last = start == 0, end >= num_layers
    if role == "embedding":
        return first or (last and tied)
    if role == "head":
        return last
    return True


def layer_of(tensor: str) -> int | None:
    match = _LAYER.search(tensor)
    return int(match.group(1)) if match else None


def is_support_file(name: str) -> bool:
    return "/" not in name and any(fnmatch(name, p) for p in SUPPORT_PATTERNS)


def tensor_bytes(dtype: str, shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * _DTYPE_BYTES.get(dtype, 1)


def card_from_snapshot(
    model_id: ModelId,
    snapshot: RepoSnapshot,
    source: ModelSource = "hub",
    location: str | None = None,
    known_architectures: frozenset[str] | None = None,
) -> ModelCard:
    """The card of one snapshot; `NotAModel` saying why when it cannot be served.

    `known_architectures`: the model types the runners' mlx-lm has (None: do not check).
    """
    config = _text_config(snapshot.config)
    architecture = str(snapshot.config.get("model_type") or config.get("model_type") or "")
    if not architecture:
        raise NotAModel(f"{snapshot.repo_id}: config.json has no model_type")
    if known_architectures is not None:
        runs_as = ARCHITECTURE_ALIASES.get(architecture, architecture)
        if runs_as not in known_architectures:
            raise NotAModel(
                f"{snapshot.repo_id}: architecture {architecture!r} is not one mlx-lm supports"
            )
    weights = sorted(
        (f for f in snapshot.files if f.name.endswith(WEIGHT_SUFFIX) and "/" not in f.name),
        key=lambda f: f.name,
    )
    if not weights:
        raise NotAModel(
            f"{snapshot.repo_id}: no safetensors weights in the repo (exo loads MLX / "
            "Hugging Face safetensors models)"
        )
    num_layers = _int(config, snapshot.repo_id, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _int(config, snapshot.repo_id, "hidden_size", "n_embd", "d_model")
    heads = _int(config, snapshot.repo_id, "num_attention_heads", "n_head")
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    quantization = _quantization(snapshot.config)
    tensors = snapshot.tensors
    layer_bytes = [0] * num_layers
    shared = 0
    parameters = 0
    scales = {t.name.removesuffix(".scales"): t for t in tensors if t.name.endswith(".scales")}
    for tensor in tensors:
        layer = layer_of(tensor.name)
        if layer is None:
            shared += tensor.nbytes
        elif layer < num_layers:
            layer_bytes[layer] += tensor.nbytes
        parameters += _parameters(tensor, scales, quantization)
    weight_bytes = sum(f.size for f in weights)
    stored = sum(layer_bytes) + shared if tensors and sum(layer_bytes) + shared else weight_bytes
    if not parameters:  # no headers: estimate from the stored size
        bits = quantization.bits if quantization else 16
        parameters = stored * 8 // bits
    files = _weight_files(weights, tensors, snapshot.weight_map)
    names = [t.name for t in tensors] or list(snapshot.weight_map)
    tied = not names or not any(tensor_role(n) == "head" and "norm" not in n for n in names)
    support = sorted((f for f in snapshot.files if is_support_file(f.name)), key=lambda f: f.name)
    return ModelCard(
        model_id=model_id,
        display_name=snapshot.repo_id.rsplit("/", 1)[-1],
        source=source,
        location=location or snapshot.repo_id,
        num_layers=num_layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        vocab_size=int(config.get("vocab_size") or snapshot.config.get("vocab_size") or 0),
        context_length=_context(config),
        weight_bytes=stored,
        loaded_bytes=max(parameters * 4, stored),
        architecture=architecture,
        revision=snapshot.revision,
        tied_embeddings=tied,
        head_dim=head_dim,
        quantization=quantization,
        num_experts=int(
            config.get("num_experts")
            or config.get("num_local_experts")
            or config.get("n_routed_experts")
            or 0
        ),
        experts_per_token=int(config.get("num_experts_per_tok") or 0),
        layer_bytes=tuple(layer_bytes) if tensors else (),
        shared_bytes=shared if tensors else 0,
        parameters=parameters,
        weight_files=files,
        support_files=tuple(f.name for f in support),
        support_blobs=tuple(f.sha256 or f.blob_id for f in support),
        digest=_digest(weights),
        modified=snapshot.modified,
    )


def files_for_layers(card: ModelCard, start: int, end: int) -> tuple[str, ...]:
    """Every file a rank holding layers [start, end) needs: the support files and the
    weight files with tensors of those layers or shared tensors (embeddings, head)."""
    tied, layers = card.tied_embeddings, card.num_layers

    def needed(f: WeightFile) -> bool:
        if f.holds_layers(start, end) or (f.shared and not f.roles):
            return True
        return any(rank_needs(role, start, end, layers, tied) for role in f.roles)

    weights = [f.name for f in card.weight_files if needed(f)] or [
        f.name for f in card.weight_files
    ]
    return tuple(sorted({*card.support_files, *weights}))


def wants_model(state: State, node_id: NodeId, model: ModelId) -> bool:
    """Whether the node should hold the model's files: a shard of it is placed there or a
    user ordered it fetched, and no user ordered its download stopped."""
    order = state.download_order(node_id, model)
    if order is not None:
        return order.action == "fetch"
    return any(i.shard_on(node_id) is not None for i in state.instances_of(model))


def files_needed(state: State, node_id: NodeId, card: ModelCard) -> tuple[str, ...]:
    """The files this node's shards of the model need (all of them for a tensor shard, or
    where a user ordered the whole model fetched)."""
    order = state.download_order(node_id, card.model_id)
    if order is not None and order.action == "fetch":
        return files_for_layers(card, 0, card.num_layers)
    names: set[str] = set()
    for instance in state.instances_of(card.model_id):
        shard = instance.shard_on(node_id)
        if shard is None:
            continue
        if instance.strategy == "tensor":
            names.update(files_for_layers(card, 0, card.num_layers))
        else:
            names.update(files_for_layers(card, shard.start_layer, shard.end_layer))
    return tuple(sorted(names))


def bytes_of(card: ModelCard, names: Sequence[str]) -> int:
    """Bytes of the named weight files (support files are small and not counted)."""
    sizes = {f.name: f.size for f in card.weight_files}
    return sum(sizes.get(name, 0) for name in names)


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs (gemma3, mistral3) keep the language model's under text_config."""
    text = config.get("text_config")
    if isinstance(text, Mapping):
        return {**config, **text}
    return config


def _int(config: Mapping[str, Any], repo: str, *names: str) -> int:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise NotAModel(f"{repo}: config.json has no {names[0]}")


def _context(config: Mapping[str, Any]) -> int:
    for name in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length"):
        value = config.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return 4096


def _quantization(config: Mapping[str, Any]) -> Quantization | None:
    block = config.get("quantization") or config.get("quantization_config")
    if not isinstance(block, Mapping):
        return None
    bits, group = block.get("bits"), block.get("group_size")
    if isinstance(bits, int) and isinstance(group, int):
        return Quantization(bits, group, str(block.get("mode", "affine")))
    if block.get("quant_method") == "mxfp4":
        return Quantization(4, 32, "mxfp4")
    return None


def _parameters(
    tensor: TensorEntry, scales: Mapping[str, TensorEntry], quantization: Quantization | None
) -> int:
    """Logical parameters of one tensor: a packed quantized matrix counts its unpacked
    values; its scales and biases count nothing."""
    name = tensor.name
    module = name.rsplit(".", 1)[0]
    if name.endswith((".scales", ".biases")) and module in scales:
        return 0
    count = 1
    for dim in tensor.shape:
        count *= dim
    scale = scales.get(module)
    if name.endswith(".weight") and tensor.dtype == "U32" and scale is not None and tensor.shape:
        group = quantization.group_size if quantization else 64
        in_dims = scale.shape[-1] * group if scale.shape else 0
        return count // max(tensor.shape[-1], 1) * in_dims
    return count


def _weight_files(
    weights: Sequence[RepoFile], tensors: Sequence[TensorEntry], weight_map: Mapping[str, str]
) -> tuple[WeightFile, ...]:
    names_by_file: dict[str, list[str]] = {f.name: [] for f in weights}
    if tensors:
        for tensor in tensors:
            names_by_file.setdefault(tensor.file, []).append(tensor.name)
    else:
        for tensor_name, file in weight_map.items():
            names_by_file.setdefault(file, []).append(tensor_name)
    out: list[WeightFile] = []
    for f in weights:
        names = names_by_file.get(f.name, [])
        layers = [layer for layer in (layer_of(n) for n in names) if layer is not None]
        shared = not names or len(layers) < len(names)
        roles = tuple(sorted({tensor_role(n) for n in names} - {"layer"}))
        first, end = (min(layers), max(layers) + 1) if layers else (0, 0)
        out.append(WeightFile(f.name, f.size, f.sha256, first, end, shared, roles))
    return tuple(out)


def _digest(weights: Sequence[RepoFile]) -> str:
    if not weights or not all(f.sha256 for f in weights):
        return ""
    joined = "".join(f"{f.name}:{f.sha256}\n" for f in weights)
    return hashlib.sha256(joined.encode()).hexdigest()
