"""Records that events carry and the state holds: node profiles, instances, statuses."""

from __future__ import annotations

from typing import Literal

from attrs import frozen

from exo.events.ids import InstanceId, ModelId, NodeId, RequestId

Accelerator = Literal["cpu", "metal", "cuda"]
Strategy = Literal["pipeline", "tensor"]
# "running" is no longer written (busy is a local fact); older logs hold it, read as ready.
RunnerPhase = Literal["starting", "loading", "ready", "running", "failed"]
# "stopped": a download ended before its last byte because it was stopped through the API
# or the model is no longer placed on the node; what it fetched stays for the next start.
DownloadPhase = Literal["pending", "downloading", "complete", "failed", "stopped"]
DownloadAction = Literal["fetch", "stop"]
ModelSource = Literal["bundled", "hub", "local"]
FinishReason = Literal["stop", "length", "cancelled"]


@frozen
class NodeProfile:
    """What a node reports about itself; memory in bytes."""

    hostname: str
    platform: str
    cpu_cores: int
    memory_total: int
    memory_available: int
    accelerator: Accelerator
    api_port: int
    peer_port: int
    # False for a coordinator-only node (`--no-worker`): it votes and serves the API but
    # is never placed on.
    worker: bool = True
    # First TCP port this node offers to the MLX ring of multi-node instances; placement
    # hands out ring_port + k.
    ring_port: int = 31700


@frozen
class Quantization:
    """How a model's matrices are stored: `bits` per weight in groups of `group_size`."""

    bits: int
    group_size: int
    mode: str = "affine"


@frozen
class WeightFile:
    """One safetensors file of a repo: its size, its hub sha256 (LFS files), and which
    decoder layers [first_layer, end_layer) it holds tensors of; `shared` when it also holds
    tensors outside the layers (embeddings, final norm, head), which every rank keeps."""

    name: str
    size: int
    sha256: str = ""
    first_layer: int = 0
    end_layer: int = 0
    shared: bool = False
    # What its tensors outside the layers are: "embedding", "head" (final norm, output
    # head), "other"; empty with `shared` when unknown (then every rank takes the file).
    roles: tuple[str, ...] = ()

    def holds_layers(self, start: int, end: int) -> bool:
        return self.first_layer < end and start < self.end_layer


@frozen
class ModelCard:
    """What placement, downloads and the API need to know about a model, before any
    weight is fetched: read from the repo's own config.json and file list (hub and local
    models) or written down (the bundled one). Hub cards enter the log (`ModelAdded`), so
    placement stays a pure function of the replicated state."""

    model_id: ModelId
    display_name: str
    source: ModelSource
    # bundled: the Python package and file inside it; hub: the repo id; local: a directory.
    location: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    context_length: int
    # Bytes of weights as stored (quantized or not).
    weight_bytes: int
    # Bytes a CPU runner holds once it widened every weight to float32.
    loaded_bytes: int
    # config.json's model_type (the mlx-lm architecture).
    architecture: str = "llama"
    # The commit the card was read at: every node fetches exactly this revision.
    revision: str = ""
    head_dim: int = 0
    quantization: Quantization | None = None
    num_experts: int = 0
    experts_per_token: int = 0
    # The output head reuses the embedding (no lm_head tensor): the last rank needs it.
    tied_embeddings: bool = True
    # Stored bytes of each decoder layer, and of what lies outside the layers.
    layer_bytes: tuple[int, ...] = ()
    shared_bytes: int = 0
    parameters: int = 0
    weight_files: tuple[WeightFile, ...] = ()
    # Config, tokenizer and template files every rank needs besides the weights, and
    # their hub etags (sha256 for LFS files, else the git blob id; "" when unknown).
    support_files: tuple[str, ...] = ()
    support_blobs: tuple[str, ...] = ()
    # sha256 over the weight files' hashes: one name for these exact weights.
    digest: str = ""
    # When the hub last changed the repo (ISO 8601), "" when unknown.
    modified: str = ""
    # The nodes that hold a local model's directory (placement keeps to them); empty for
    # bundled and hub models, which every node can get.
    hosts: tuple[NodeId, ...] = ()

    @property
    def kv_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def stored_bytes(self, start: int, end: int) -> int:
        """Stored bytes a rank holding layers [start, end) loads: its layers and the shared
        tensors (every rank builds the embeddings and the head), or a proportional share
        when the card has no per-layer figures."""
        if len(self.layer_bytes) == self.num_layers:
            return sum(self.layer_bytes[start:end]) + self.shared_bytes
        return self.weight_bytes * (end - start) // self.num_layers

    def float32_bytes(self, start: int, end: int) -> int:
        """The same rank's bytes once widened to float32 (a CPU runner's default)."""
        stored = self.stored_bytes(start, end)
        if not self.weight_bytes:
            return stored
        return stored * self.loaded_bytes // self.weight_bytes


@frozen
class LinkStats:
    """What one node measured of its link to `peer`: round-trip time, and a cheap
    throughput estimate (bits per second) once one was taken."""

    peer: NodeId
    latency_us: int
    bandwidth_bps: int | None = None
    # The peer's IP address as this node reaches it (where the MLX ring dials it).
    address: str = ""


@frozen
class Shard:
    """One rank's slice of a model: layers [start_layer, end_layer)."""

    node_id: NodeId
    rank: int
    start_layer: int
    end_layer: int
    # On a CPU node: keep the weights as stored (quantized) because float32 does not fit.
    keep_quantized: bool = False


@frozen
class Instance:
    """A model placed on a set of nodes; one runner per shard."""

    instance_id: InstanceId
    model: ModelId
    strategy: Strategy
    shards: tuple[Shard, ...]
    # "ip:port" per rank for the MLX ring of a multi-node instance; empty for one node.
    ring: tuple[str, ...] = ()
    # The context its memory was planned for (requests are capped at it); None: the model's.
    context_length: int | None = None

    def shard_on(self, node_id: NodeId) -> Shard | None:
        return next((s for s in self.shards if s.node_id == node_id), None)


@frozen
class RunnerStatus:
    """A runner's phase; `detail` holds the stderr tail when it failed, `restarts` counts crashes."""

    phase: RunnerPhase
    detail: str = ""
    restarts: int = 0


@frozen
class DownloadStatus:
    phase: DownloadPhase
    bytes_done: int = 0
    bytes_total: int = 0
    detail: str = ""
    # Recent download rate (bytes per second) while downloading.
    rate: int = 0


@frozen
class DownloadOrder:
    """What a user asked of a model's download on a node (`POST`/`DELETE /downloads`):
    fetch all of it (placed or not), or stop fetching it (placed or not). `serial` counts
    the orders for that node and model, so a node tells a new "fetch" (retry a failed
    download) from the one it already obeyed."""

    action: DownloadAction
    serial: int = 1


@frozen
class RequestRecord:
    """An in-flight generation request: its lifecycle, never its tokens."""

    request_id: RequestId
    instance_id: InstanceId
    api_node: NodeId
    model: ModelId


@frozen
class RequestTally:
    """What one API node's requests on one instance did since its last report: how many
    are in flight now (a gauge) and how many ended, with their tokens (deltas)."""

    instance_id: InstanceId
    in_flight: int = 0
    finished: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@frozen
class RequestCounters:
    finished: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


__all__ = [
    "Accelerator",
    "DownloadAction",
    "DownloadOrder",
    "DownloadPhase",
    "DownloadStatus",
    "FinishReason",
    "Instance",
    "LinkStats",
    "ModelCard",
    "ModelSource",
    "NodeProfile",
    "Quantization",
    "RequestCounters",
    "RequestRecord",
    "RequestTally",
    "RunnerPhase",
    "RunnerStatus",
    "Shard",
    "Strategy",
    "WeightFile",
]
