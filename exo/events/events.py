"""Events: the facts the master has decided, in log order. One closed union."""

from __future__ import annotations

from attrs import frozen

from exo.events.facts import (
    DownloadAction,
    DownloadStatus,
    FinishReason,
    Instance,
    LinkStats,
    ModelCard,
    NodeProfile,
    RequestRecord,
    RequestTally,
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
class ModelAdded:
    """A model the cluster can place from now on: its card, read from its repo once."""

    card: ModelCard


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
class DownloadOrdered:
    """A user's order for a model's download on a node (`facts.DownloadOrder`)."""

    node_id: NodeId
    model: ModelId
    action: DownloadAction


@frozen
class RequestsTallied:
    """An API node's requests since its last report (about once a second while it
    serves): no event per request. Its tallies replace the node's in-flight gauges."""

    node_id: NodeId
    tallies: tuple[RequestTally, ...]


# Written per request by logs before 2026-12-04; replayed, and adopted from old suffixes.
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


@frozen
class LinksMeasured:
    """A node's current measurements of its links, one per peer it is linked with."""

    node_id: NodeId
    links: tuple[LinkStats, ...]


@frozen
class NodeDown:
    """The master stopped hearing from a node; it returns by registering again."""

    node_id: NodeId


# Decisions a deposed master's clients may have been told about: what adoption carries over.
AdoptableEvent = (
    ModelAdded
    | InstanceCreated
    | InstanceDeleted
    | RequestStarted
    | RequestFinished
    | RequestFailed
)


@frozen
class AdoptedEvent:
    """One event of a deposed master's log, re-decided by the master that won."""

    command_id: CommandId | None
    event: AdoptableEvent


@frozen
class SuffixAdopted:
    """The part of a deposed term's log past the common prefix, carried into this log.

    `term`/`master` name the deposed term and `through_index` the last of its indexes
    adopted, so adopting the same suffix again (from another node) changes nothing.
    """

    term: int
    master: NodeId
    through_index: int
    events: tuple[AdoptedEvent, ...]
    # Earlier adoptions carried along inside this suffix: (term, master, through_index).
    nested: tuple[tuple[int, NodeId, int], ...] = ()


Event = (
    MasterElected
    | NodeProfiled
    | NodeDown
    | LinksMeasured
    | SuffixAdopted
    | ModelAdded
    | InstanceCreated
    | InstanceDeleted
    | RunnerStatusChanged
    | DownloadStatusChanged
    | DownloadOrdered
    | RequestStarted
    | RequestFinished
    | RequestFailed
    | RequestsTallied
)
EVENT_TYPES: tuple[type, ...] = Event.__args__  # type: ignore[attr-defined]


@frozen
class IndexedEvent:
    """An event as the log stores it: its index, the master's term, and the command it answers."""

    index: int
    term: int
    event: Event
    command_id: CommandId | None = None
