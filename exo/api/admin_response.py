"""What the admin routes send, as typed models: the node's view of the cluster state, its
instances, downloads, models and placement previews.

The node builds these (`exo/actors/api_host.py`, `instances_host.py`,
`downloads_host.py`) and hands them to the routes through `Backend`, and `/openapi.json`
takes their schemas, so the document cannot drift from what is sent. A field that is
`UNSET` is left out of the JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from exo.events.facts import DownloadAction, DownloadPhase, DownloadStatus, Shard, Strategy
from exo.events.ids import NodeId

InstanceStatus = Literal["placing", "downloading", "loading", "ready", "failed"]


class Health(Struct, frozen=True):
    status: Literal["ok"]


class StateView(Struct, frozen=True):
    node_id: str
    master: str | None
    term: int
    index: int
    hash: str
    # The replicated state as the event codec writes it (docs/architecture.md).
    state: dict[str, Any]


class ShardView(Struct, frozen=True):
    """One rank's slice of a model: layers [start_layer, end_layer)."""

    node_id: str
    rank: int
    start_layer: int
    end_layer: int
    keep_quantized: bool

    @classmethod
    def of(cls, shard: Shard) -> ShardView:
        return cls(
            shard.node_id, shard.rank, shard.start_layer, shard.end_layer, shard.keep_quantized
        )


class InstanceView(Struct, frozen=True):
    id: str
    model: str
    strategy: Strategy
    status: InstanceStatus
    shards: list[ShardView]
    ring: list[str]
    context_length: int | None


class Instances(Struct, frozen=True):
    instances: list[InstanceView]


class DeletedInstance(Struct, frozen=True):
    id: str
    deleted: Literal[True]


class DownloadEntry(Struct, frozen=True, kw_only=True):
    """One node's download of one model; with no status yet (only an order), its progress
    fields are left out."""

    node: str
    model: str
    phase: DownloadPhase | None
    bytes_done: int | UnsetType = UNSET
    bytes_total: int | UnsetType = UNSET
    detail: str | UnsetType = UNSET
    rate: Annotated[int, Meta(description="Bytes per second, recently.")] | UnsetType = UNSET
    eta_seconds: Annotated[float, Meta(ge=0)] | None
    order: DownloadAction | None


class Downloads(Struct, frozen=True):
    downloads: list[DownloadEntry]


class DownloadProgress(Struct, frozen=True):
    """A node's download of a model, as `GET /models` shows it."""

    phase: DownloadPhase
    bytes_done: int
    bytes_total: int
    detail: str
    rate: int

    @classmethod
    def of(cls, status: DownloadStatus) -> DownloadProgress:
        return cls(status.phase, status.bytes_done, status.bytes_total, status.detail, status.rate)


class ModelView(Struct, frozen=True, kw_only=True):
    """A model as `GET /models` shows it: its card and every node's download of it, with
    its instances; a catalogue alias not read from the hub yet has no card, and says
    which repo it names."""

    id: str
    alias_of: str | UnsetType = UNSET
    # The model's card as the event codec writes it.
    card: dict[str, Any] | None
    downloads: dict[NodeId, DownloadProgress]
    instances: list[str] | UnsetType = UNSET


class ModelViews(Struct, frozen=True):
    models: list[ModelView]


class PlacementPreview(Struct, frozen=True):
    """A candidate placement, valid or not (`reason` says why not), with the decode
    speed predicted for it."""

    strategy: Strategy
    node_count: int
    shards: list[ShardView]
    memory_by_node: dict[NodeId, int]
    predicted_tokens_per_second: float | None
    valid: bool
    reason: str
