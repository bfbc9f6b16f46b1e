"""Commands: requests to the master, which turns each into zero or more events."""

from __future__ import annotations

from attrs import frozen

from exo.events.events import IndexedEvent
from exo.events.facts import (
    DownloadAction,
    DownloadStatus,
    LinkStats,
    ModelCard,
    NodeProfile,
    RequestTally,
    RunnerStatus,
    Strategy,
)
from exo.events.ids import CommandId, InstanceId, ModelId, NodeId


@frozen
class RegisterNode:
    profile: NodeProfile


@frozen
class AddModel:
    """Make a model placeable: its card, read from the repo by the node that was asked."""

    card: ModelCard


@frozen
class PlaceInstance:
    model: ModelId
    strategy: Strategy = "pipeline"
    min_nodes: int = 1
    nodes: tuple[NodeId, ...] | None = None
    # Accept without placing when the model already has an instance (a chat request's
    # implicit placement), so concurrent requests never place twice.
    if_absent: bool = False
    # Tokens of context to plan KV-cache memory for (and cap requests at); None: the
    # model's whole context.
    context_length: int | None = None


@frozen
class DeleteInstance:
    instance_id: InstanceId


@frozen
class ReportRunnerStatus:
    instance_id: InstanceId
    status: RunnerStatus


@frozen
class ReportDownload:
    model: ModelId
    status: DownloadStatus


@frozen
class OrderDownload:
    """Fetch a whole model onto a node, or stop fetching it there (`POST`/`DELETE /downloads`)."""

    node_id: NodeId
    model: ModelId
    action: DownloadAction


@frozen
class ReportRequests:
    """This node's request tallies since its last report (`exo/actors/request_tally.py`)."""

    tallies: tuple[RequestTally, ...]


@frozen
class ReportLinks:
    links: tuple[LinkStats, ...]


@frozen
class MarkNodeDown:
    """Sent by the master's own failure detector about a silent node."""

    node_id: NodeId


@frozen
class AdoptSuffix:
    """Sent by a node whose log diverges from the new master's: the events past the common
    prefix from one deposed term, to be re-decided before the node truncates them."""

    term: int
    master: NodeId
    events: tuple[IndexedEvent, ...]
    # The master whose log the common prefix was computed against; another one refuses
    # the command (its log may share a different prefix).
    to_term: int
    to_master: NodeId


Command = (
    RegisterNode
    | MarkNodeDown
    | ReportLinks
    | AdoptSuffix
    | AddModel
    | PlaceInstance
    | DeleteInstance
    | ReportRunnerStatus
    | ReportDownload
    | OrderDownload
    | ReportRequests
)
COMMAND_TYPES: tuple[type, ...] = Command.__args__  # type: ignore[attr-defined]


@frozen
class Envelope:
    """A command with its idempotency key and the node that sent it."""

    command_id: CommandId
    origin: NodeId
    command: Command


@frozen
class CommandOutcome:
    """The master's answer to one command: accepted (with the last index it produced) or not."""

    command_id: CommandId
    accepted: bool
    reason: str = ""
    index: int = 0
