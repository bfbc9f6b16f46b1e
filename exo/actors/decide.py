"""Command handling: a pure function from (state, command) to events or a rejection.

The master actor around it does the I/O; nothing here reads the clock, randomness or
the network, so a command log replays to the same decisions.
"""

from __future__ import annotations

import hashlib

from attrs import evolve, frozen

from exo.actors.placement import (
    PlacementError,
    place,
    planned_context,
    ring_addresses,
    with_commitments,
)
from exo.actors.previews import best_placement
from exo.events.commands import (
    AddModel,
    AdoptSuffix,
    DeleteInstance,
    Envelope,
    MarkNodeDown,
    OrderDownload,
    PlaceInstance,
    RegisterNode,
    ReportDownload,
    ReportLinks,
    ReportRequests,
    ReportRunnerStatus,
)
from exo.events.events import (
    AdoptedEvent,
    DownloadOrdered,
    DownloadStatusChanged,
    Event,
    InstanceCreated,
    InstanceDeleted,
    LinksMeasured,
    ModelAdded,
    NodeDown,
    NodeProfiled,
    RequestFailed,
    RequestFinished,
    RequestsTallied,
    RequestStarted,
    RunnerStatusChanged,
    SuffixAdopted,
)
from exo.events.facts import Instance
from exo.events.ids import CommandId, InstanceId, NodeId
from exo.events.state import State, apply_event
from exo.models.cards import card_for


@frozen
class Rejected:
    reason: str


Decision = list[Event] | Rejected


def instance_id_for(command_id: CommandId) -> InstanceId:
    """Derived from the placing command, so a retried command names the same instance."""
    return InstanceId("inst-" + hashlib.sha256(command_id.encode()).hexdigest()[:12])


def decide(state: State, envelope: Envelope) -> Decision:
    origin = envelope.origin
    match envelope.command:
        case RegisterNode(profile=profile):
            if state.nodes.get(origin) == profile:
                return []
            return [NodeProfiled(origin, profile)]
        case MarkNodeDown(node_id=node_id):
            if origin != state.master:
                return Rejected("only the master marks nodes down")
            return node_down(state, envelope.command_id, node_id)
        case ReportLinks(links=links):
            current = state.links.get(origin, {})
            if {link.peer: link for link in links} == current:
                return []
            return [LinksMeasured(origin, links)]
        case AdoptSuffix() as command:
            return adopt(state, command)
        case AddModel(card=card):
            # The first card read wins: every node fetches the revision it names.
            if card.model_id in state.models or card_for(card.model_id) is not None:
                return []
            return [ModelAdded(card)]
        case PlaceInstance() as command:
            return _place(state, envelope.command_id, command)
        case DeleteInstance(instance_id=instance_id):
            if instance_id not in state.instances:
                return Rejected(f"no instance {instance_id}")
            return [
                *orphaned_requests(state, set(), {instance_id}, "its instance was deleted"),
                InstanceDeleted(instance_id),
            ]
        case ReportRunnerStatus(instance_id=instance_id, status=status):
            if (
                instance_id not in state.instances
                or state.runner_status(instance_id, origin) == status
            ):
                return []
            return [RunnerStatusChanged(instance_id, origin, status)]
        case ReportDownload(model=model, status=status):
            if state.download_status(origin, model) == status:
                return []
            return [DownloadStatusChanged(origin, model, status)]
        case OrderDownload() as command:
            return _order_download(state, command)
        case ReportRequests(tallies=tallies):
            known = tuple(t for t in tallies if t.instance_id in state.instances)
            gauges = {t.instance_id: t.in_flight for t in known if t.in_flight}
            ended = any(t.finished or t.failed for t in known)
            if origin not in state.nodes:
                # A node marked down keeps no gauges; what ended still counts.
                known = tuple(evolve(t, in_flight=0) for t in known)
                gauges = {}
            if not ended and gauges == dict(state.in_flight.get(origin, {})):
                return []
            return [RequestsTallied(origin, known)]
    return Rejected(f"unknown command {type(envelope.command).__name__}")


def _order_download(state: State, command: OrderDownload) -> Decision:
    profile = state.nodes.get(command.node_id)
    if profile is None:
        return Rejected(f"no node {command.node_id} in the cluster")
    if not profile.worker:
        return Rejected(f"node {command.node_id} is coordinator-only and holds no models")
    card = card_for(command.model, state.models)
    if card is None:
        return Rejected(f"unknown model {command.model}")
    if card.source == "local" and command.node_id not in card.hosts:
        return Rejected(f"{card.model_id} is a directory on {', '.join(card.hosts)} only")
    return [DownloadOrdered(command.node_id, card.model_id, command.action)]


def _place(state: State, command_id: CommandId, command: PlaceInstance) -> Decision:
    card = card_for(command.model, state.models)
    if card is None:
        return Rejected(f"unknown model {command.model}")
    if command.if_absent and state.instances_of(card.model_id):
        return []
    if instance_id_for(command_id) in state.instances:
        # A retry the master no longer remembers the outcome of: it was decided already,
        # and deciding again would replace the live instance (and reset its runners).
        return []
    seen = with_commitments(state)
    try:
        if command.nodes is None:
            placement = best_placement(
                seen, card, command.strategy, command.min_nodes, command.context_length
            )
        else:
            placement = place(
                seen,
                card,
                command.strategy,
                command.min_nodes,
                command.nodes,
                command.context_length,
            )
        ring = ring_addresses(state, placement.shards, state.last_index)
    except PlacementError as exc:
        return Rejected(str(exc))
    instance = Instance(
        instance_id_for(command_id),
        card.model_id,
        placement.strategy,
        placement.shards,
        ring,
        planned_context(card, command.context_length),
    )
    return [InstanceCreated(instance)]


def node_down(state: State, command_id: CommandId, node_id: NodeId) -> list[Event]:
    """The node leaves the state, every instance with a shard on it is deleted (its ring
    is broken), and each is placed again, with the same strategy, on the nodes left when
    they fit and no other instance of the model remains. A node that is not registered
    may still hold the shard of an adopted instance (`State.unregistered`)."""
    broken = sorted(
        (i for i in state.instances.values() if i.shard_on(node_id) is not None),
        key=lambda i: i.instance_id,
    )
    if node_id not in state.nodes and not broken:
        return []
    events: list[Event] = [NodeDown(node_id)]
    # Requests the lost node's API took, or that ran on an instance it was part of, end
    # here: nobody is left to report them (before the deletions, so they are counted).
    events += orphaned_requests(
        state, {node_id}, {i.instance_id for i in broken}, f"node {node_id} was lost"
    )
    draft = state
    for event in events:
        draft = apply_event(draft, event)
    return events + place_again(draft, command_id, broken)


def place_again(state: State, command_id: CommandId, broken: list[Instance]) -> list[Event]:
    """Delete `broken` instances (a shard on a node that is gone) and place each again,
    with the same strategy and context, on the nodes left, when it fits and no other
    instance of its model remains; ids derive from `command_id`, so a retry is the same."""
    events: list[Event] = []
    draft = state
    for instance in broken:
        deleted = InstanceDeleted(instance.instance_id)
        events.append(deleted)
        draft = apply_event(draft, deleted)
    for instance in broken:
        card = card_for(instance.model, draft.models)
        if card is None or draft.instances_of(instance.model):
            continue
        try:
            placement = best_placement(
                with_commitments(draft), card, instance.strategy, context=instance.context_length
            )
            ring = ring_addresses(draft, placement.shards, state.last_index)
        except PlacementError:
            continue  # nowhere to go now; the next request for the model places it again
        replacement = Instance(
            instance_id_for(CommandId(f"{command_id}/{instance.instance_id}")),
            card.model_id,
            placement.strategy,
            placement.shards,
            ring,
            instance.context_length,
        )
        created = InstanceCreated(replacement)
        events.append(created)
        draft = apply_event(draft, created)
    return events


def orphaned_requests(
    state: State, nodes: set[NodeId], instances: set[InstanceId], why: str
) -> list[Event]:
    """`RequestFailed` for every open request taken by one of `nodes` or running on one
    of `instances`, in id order."""
    return [
        RequestFailed(request_id, f"request lost: {why}")
        for request_id, record in sorted(state.requests.items())
        if record.api_node in nodes or record.instance_id in instances
    ]


def adopt(state: State, command: AdoptSuffix) -> Decision:
    """Carry a deposed term's divergent events into this log, where they still make sense.

    Client-visible decisions (instances, request lifecycle) are kept unless this log has
    already made them moot; node-local facts (profiles, downloads, runner status) are left
    out, because their owners re-assert the current ones to the new master. Adoptions
    inside the suffix are carried too, so a decision survives any number of failovers.
    An adopted instance with a shard on a node this log has marked down is kept (a client
    was told of it): the nodes of the other side register again as they hear the heal,
    and the master's failure detector watches the unregistered nodes that hold shards
    (`State.unregistered`), so one that stays silent, or unregistered past the failure
    timeout, loses its instances as any lost node does. The sending node registers
    itself before it adopts (`Control._adopt`). What the deposed side's failure
    detector did is its view of who was lost: dropped for a node this log holds live,
    and a replacement dropped where this log already runs its model.
    """
    if (state.term, state.master) != (command.to_term, command.to_master):
        return Rejected(f"adoption was computed against {command.to_term}/{command.to_master}")
    through = state.adopted_through(command.term, command.master)
    fresh = [e for e in command.events if e.term == command.term and e.index > through]
    if not fresh:
        return []
    draft = state
    kept: list[AdoptedEvent] = []
    nested: list[tuple[int, NodeId, int]] = []
    # The deposed side's failure detector: the node each of its commands marked down (in
    # the same command it deleted that node's instances and placed them again).
    marked_down = {
        e.command_id: e.event.node_id
        for e in fresh
        if isinstance(e.event, NodeDown) and e.command_id is not None
    }

    def consider(command_id: CommandId | None, event: Event) -> None:
        nonlocal draft
        node = marked_down.get(command_id) if command_id is not None else None
        if node is not None and _moot_after_node_down(draft, node, event):
            return
        if _still_applies(draft, event):
            kept.append(AdoptedEvent(command_id, event))  # type: ignore[arg-type]
            draft = apply_event(draft, event)
        elif node is None and isinstance(event, InstanceDeleted):
            # A deletion already made here is kept as a record: what made it redundant
            # may itself be undone by a later adoption (a failure detector's deletion
            # for a node that turns out live), and the client's deletion must then hold.
            kept.append(AdoptedEvent(command_id, event))

    for indexed in fresh:
        event = indexed.event
        if isinstance(event, SuffixAdopted):
            mark = (event.term, event.master, event.through_index)
            if draft.adopted_through(event.term, event.master) >= event.through_index:
                continue  # adopted here directly already
            nested.append(mark)
            nested.extend(event.nested)
            for inner in event.events:
                consider(inner.command_id, inner.event)
        else:
            consider(indexed.command_id, event)
    through_index = max(e.index for e in fresh)
    return [SuffixAdopted(command.term, command.master, through_index, tuple(kept), tuple(nested))]


def _moot_after_node_down(state: State, node_id: NodeId, event: Event) -> bool:
    """Whether this log has made moot what the deposed side did because it marked
    `node_id` down: all of it when the node is live here (the heal showed it cut off, not
    lost, and its instances still serve); a replacement where this log runs the model
    already (`place_again` would not place a second)."""
    if node_id in state.nodes:
        return True
    return isinstance(event, InstanceCreated) and bool(state.instances_of(event.instance.model))


def _still_applies(state: State, event: Event) -> bool:
    match event:
        case ModelAdded(card=card):
            return card.model_id not in state.models
        case InstanceCreated(instance=instance):
            iid = instance.instance_id
            return iid not in state.instances and iid not in state.deleted
        case InstanceDeleted(instance_id=instance_id):
            return instance_id in state.instances
        case RequestStarted(request=request):
            return (
                request.request_id not in state.requests and request.instance_id in state.instances
            )
        case RequestFinished(request_id=request_id) | RequestFailed(request_id=request_id):
            return request_id in state.requests
    return False
