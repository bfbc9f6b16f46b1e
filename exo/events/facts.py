"""Records that events carry and the state holds: node profiles, instances, statuses."""

from __future__ import annotations

from typing import Literal

from attrs import frozen

from exo.events.ids import InstanceId, ModelId, NodeId, RequestId

Accelerator = Literal["cpu", "metal", "cuda"]
Strategy = Literal["pipeline", "tensor"]
RunnerPhase = Literal["starting", "loading", "ready", "running", "failed"]
DownloadPhase = Literal["pending", "downloading", "complete", "failed"]
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


@frozen
class RequestRecord:
    """An in-flight generation request: its lifecycle, never its tokens."""

    request_id: RequestId
    instance_id: InstanceId
    api_node: NodeId
    model: ModelId


@frozen
class RequestCounters:
    finished: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


__all__ = [
    "Accelerator",
    "DownloadPhase",
    "DownloadStatus",
    "FinishReason",
    "Instance",
    "LinkStats",
    "NodeProfile",
    "RequestCounters",
    "RequestRecord",
    "RunnerPhase",
    "RunnerStatus",
    "Shard",
    "Strategy",
]
