"""Events: the facts the master has decided, in log order. One closed union."""

from __future__ import annotations

from attrs import frozen

from exo.events.facts import (
    DownloadStatus,
    FinishReason,
    Instance,
    NodeProfile,
    RequestRecord,
    RunnerStatus,
)
from exo.events.ids import CommandId, InstanceId, ModelId, NodeId, RequestId


@frozen
class MasterElected:
    node_id: NodeId
    term: int


@frozen
class NodeProfiled:
    node_id: NodeId
    profile: NodeProfile


@frozen
class InstanceCreated:
    instance: Instance


@frozen
class InstanceDeleted:
    instance_id: InstanceId


@frozen
class RunnerStatusChanged:
    instance_id: InstanceId
    node_id: NodeId
    status: RunnerStatus


@frozen
class DownloadStatusChanged:
    node_id: NodeId
    model: ModelId
    status: DownloadStatus


@frozen
class RequestStarted:
    request: RequestRecord


@frozen
class RequestFinished:
    request_id: RequestId
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@frozen
class RequestFailed:
    request_id: RequestId
    error: str


Event = (
    MasterElected
    | NodeProfiled
    | InstanceCreated
    | InstanceDeleted
    | RunnerStatusChanged
    | DownloadStatusChanged
    | RequestStarted
    | RequestFinished
    | RequestFailed
)
EVENT_TYPES: tuple[type, ...] = Event.__args__  # type: ignore[attr-defined]


@frozen
class IndexedEvent:
    """An event as the log stores it: its index, the master's term, and the command it answers."""

    index: int
    term: int
    event: Event
    command_id: CommandId | None = None
