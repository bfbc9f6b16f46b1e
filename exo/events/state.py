"""The replicated state and `apply`: a pure fold of indexed events.

`apply` reads no clock, no randomness and no I/O; the same log gives the same state,
and so the same `state_hash`, on any machine.
"""

from __future__ import annotations

from typing import Any, TypeVar

from attrs import evolve, field, fields, frozen
from immutables import Map

from exo.events.codec import digest
from exo.events.events import (
    DownloadOrdered,
    DownloadStatusChanged,
    IndexedEvent,
    InstanceCreated,
    InstanceDeleted,
    LinksMeasured,
    MasterElected,
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
from exo.events.facts import (
    DownloadOrder,
    DownloadStatus,
    Instance,
    LinkStats,
    ModelCard,
    NodeProfile,
    RequestCounters,
    RequestRecord,
    RequestTally,
    RunnerStatus,
)
from exo.events.ids import InstanceId, ModelId, NodeId, RequestId

K = TypeVar("K")
V = TypeVar("V")


class ApplyError(ValueError):
    """An event that cannot follow the state: a gap, a repeat, or an older term."""


@frozen
class State:
    """What the log has decided so far. Its maps are persistent (structure-sharing, a C
    HAMT): `apply` changes one key in O(log n) instead of copying a dict per event
    (docs/architecture.md, "The pure core")."""

    last_index: int = 0
    term: int = 0
    master: NodeId | None = None
    nodes: Map[NodeId, NodeProfile] = field(factory=Map)
    # Models added from their repos (the bundled one needs no card here).
    models: Map[ModelId, ModelCard] = field(factory=Map)
    instances: Map[InstanceId, Instance] = field(factory=Map)
    runners: Map[InstanceId, Map[NodeId, RunnerStatus]] = field(factory=Map)
    downloads: Map[NodeId, Map[ModelId, DownloadStatus]] = field(factory=Map)
    # Per-request records, written only by logs from before request tallies.
    requests: Map[RequestId, RequestRecord] = field(factory=Map)
    request_counters: Map[InstanceId, RequestCounters] = field(factory=Map)
    # Requests in flight: API node -> instance -> count, as each node last reported.
    in_flight: Map[NodeId, Map[InstanceId, int]] = field(factory=Map)
    # Measured links: from node -> to node -> stats (the topology placement can use).
    links: Map[NodeId, Map[NodeId, LinkStats]] = field(factory=Map)
    # Deposed terms whose divergent suffix this log adopted: "term/master" -> last index.
    adopted: Map[str, int] = field(factory=Map)
    # Users' orders to fetch or stop a model's download: node -> model -> order.
    download_orders: Map[NodeId, Map[ModelId, DownloadOrder]] = field(factory=Map)
    # Instances deleted, so an adopted creation from a branch that never saw the deletion
    # cannot bring one back (ids are never reused).
    deleted: Map[InstanceId, bool] = field(factory=Map)

    def runner_status(self, instance_id: InstanceId, node_id: NodeId) -> RunnerStatus | None:
        per_node = self.runners.get(instance_id)
        return None if per_node is None else per_node.get(node_id)

    def download_status(self, node_id: NodeId, model: ModelId) -> DownloadStatus | None:
        per_model = self.downloads.get(node_id)
        return None if per_model is None else per_model.get(model)

    def download_order(self, node_id: NodeId, model: ModelId) -> DownloadOrder | None:
        per_model = self.download_orders.get(node_id)
        return None if per_model is None else per_model.get(model)

    def instances_of(self, model: ModelId) -> list[Instance]:
        return [i for i in self.instances.values() if i.model == model]

    def unregistered(self) -> set[NodeId]:
        """Nodes an instance holds a shard on that the state lacks: an instance adopted
        from a partition's other side, on a node of that side not registered again yet
        (the master's failure detector watches them too)."""
        shards = (s.node_id for i in self.instances.values() for s in i.shards)
        return {n for n in shards if n not in self.nodes}

    def adopted_through(self, term: int, master: NodeId) -> int:
        return self.adopted.get(adoption_key(term, master), 0)


def adoption_key(term: int, master: NodeId) -> str:
    return f"{term}/{master}"


def state_hash(state: State) -> str:
    """sha256 of the canonical encoding of the state."""
    return digest(state)


def apply(state: State, indexed: IndexedEvent) -> State:
    """The state after one more event; raises `ApplyError` unless it is the next index."""
    if indexed.index != state.last_index + 1:
        raise ApplyError(f"event {indexed.index} does not follow index {state.last_index}")
    if indexed.term < state.term:
        raise ApplyError(f"event {indexed.index} has term {indexed.term} < current {state.term}")
    return apply_event(state, indexed.event, last_index=indexed.index, term=indexed.term)


def apply_event(state: State, event: object, **index: int) -> State:
    """The effect of one event, with the index bookkeeping given in `index` (`last_index`,
    `term`; none when adoption re-applies inner events)."""
    change = _replacer(index)
    match event:
        case MasterElected(node_id=node_id):
            return change(state, master=node_id)
        case NodeProfiled(node_id=node_id, profile=profile):
            return change(state, nodes=state.nodes.set(node_id, profile))
        case NodeDown(node_id=node_id):
            return change(
                state,
                nodes=_without(state.nodes, node_id),
                links=_without(state.links, node_id),
                in_flight=_without(state.in_flight, node_id),
            )
        case LinksMeasured(node_id=node_id, links=links):
            per_peer = Map({link.peer: link for link in links})
            return change(state, links=state.links.set(node_id, per_peer))
        case SuffixAdopted(term=term, master=master, through_index=through):
            for adopted in event.events:
                state = apply_event(state, adopted.event)
            marks = state.adopted
            for mark_term, mark_master, mark_through in ((term, master, through), *event.nested):
                key = adoption_key(mark_term, mark_master)
                marks = marks.set(key, max(marks.get(key, 0), mark_through))
            return change(state, adopted=marks)
        case ModelAdded(card=card):
            return change(state, models=state.models.set(card.model_id, card))
        case InstanceCreated(instance=instance):
            return change(
                state,
                instances=state.instances.set(instance.instance_id, instance),
                runners=state.runners.set(instance.instance_id, Map()),
            )
        case InstanceDeleted(instance_id=instance_id):
            return change(
                state,
                deleted=state.deleted.set(instance_id, True),
                instances=_without(state.instances, instance_id),
                runners=_without(state.runners, instance_id),
                request_counters=_without(state.request_counters, instance_id),
                in_flight=_without_instance(state.in_flight, instance_id),
            )
        case RunnerStatusChanged(instance_id=instance_id, node_id=node_id, status=status):
            if instance_id not in state.instances:
                return change(state)
            per_node = state.runners.get(instance_id, Map()).set(node_id, status)
            return change(state, runners=state.runners.set(instance_id, per_node))
        case DownloadStatusChanged(node_id=node_id, model=model, status=status):
            per_model = state.downloads.get(node_id, Map()).set(model, status)
            return change(state, downloads=state.downloads.set(node_id, per_model))
        case DownloadOrdered(node_id=node_id, model=model, action=action):
            last = state.download_order(node_id, model)
            order = DownloadOrder(action, 1 if last is None else last.serial + 1)
            per_model = state.download_orders.get(node_id, Map()).set(model, order)
            return change(state, download_orders=state.download_orders.set(node_id, per_model))
        case RequestStarted(request=request):
            return change(state, requests=state.requests.set(request.request_id, request))
        case RequestFinished(request_id=request_id) | RequestFailed(request_id=request_id):
            return change(state, **_close_request(state, request_id, event))
        case RequestsTallied(node_id=node_id, tallies=tallies):
            return change(state, **_tally(state, node_id, tallies))
        case _:
            raise ApplyError(f"unknown event {type(event).__name__}")


def _replacer(index: dict[str, int]) -> Any:
    """`evolve` for the state with the index bookkeeping added to every change."""
    if not index:
        return _replace
    return lambda state, **changes: _replace(state, **index, **changes)


def _replace(state: State, **changes: Any) -> State:
    """`attrs.evolve` for the one class `apply` rebuilds per event, without its per-field
    introspection (evolve was a third of `apply`'s time)."""
    if not changes.keys() <= _STATE_FIELDS:
        raise TypeError(f"State has no field {sorted(changes.keys() - _STATE_FIELDS)}")
    get = changes.get
    return State(
        get("last_index", state.last_index),
        get("term", state.term),
        get("master", state.master),
        get("nodes", state.nodes),
        get("models", state.models),
        get("instances", state.instances),
        get("runners", state.runners),
        get("downloads", state.downloads),
        get("requests", state.requests),
        get("request_counters", state.request_counters),
        get("in_flight", state.in_flight),
        get("links", state.links),
        get("adopted", state.adopted),
        get("download_orders", state.download_orders),
        get("deleted", state.deleted),
    )


_STATE_FIELDS = frozenset(a.name for a in fields(State))


def _close_request(state: State, request_id: RequestId, event: object) -> dict[str, Any]:
    """The changes a request's end makes (none when its record is unknown)."""
    record = state.requests.get(request_id)
    if record is None:
        return {}
    counters = state.request_counters.get(record.instance_id, RequestCounters())
    if isinstance(event, RequestFinished):
        counters = evolve(
            counters,
            finished=counters.finished + 1,
            prompt_tokens=counters.prompt_tokens + event.prompt_tokens,
            completion_tokens=counters.completion_tokens + event.completion_tokens,
        )
    else:
        counters = evolve(counters, failed=counters.failed + 1)
    request_counters = state.request_counters
    if record.instance_id in state.instances:
        request_counters = request_counters.set(record.instance_id, counters)
    return {"requests": state.requests.delete(request_id), "request_counters": request_counters}


def _tally(state: State, node_id: NodeId, tallies: tuple[RequestTally, ...]) -> dict[str, Any]:
    """The changes one API node's tallies make."""
    counters = state.request_counters
    gauges: dict[InstanceId, int] = {}
    for tally in tallies:
        if tally.instance_id not in state.instances:
            continue
        if tally.in_flight:
            gauges[tally.instance_id] = tally.in_flight
        old = counters.get(tally.instance_id, RequestCounters())
        counters = counters.set(
            tally.instance_id,
            RequestCounters(
                old.finished + tally.finished,
                old.failed + tally.failed,
                old.prompt_tokens + tally.prompt_tokens,
                old.completion_tokens + tally.completion_tokens,
            ),
        )
    in_flight = (
        state.in_flight.set(node_id, Map(gauges)) if gauges else _without(state.in_flight, node_id)
    )
    return {"request_counters": counters, "in_flight": in_flight}


def _without_instance(
    per_node: Map[NodeId, Map[InstanceId, int]], instance_id: InstanceId
) -> Map[NodeId, Map[InstanceId, int]]:
    for node_id, gauges in per_node.items():
        if instance_id in gauges:
            rest = gauges.delete(instance_id)
            per_node = per_node.set(node_id, rest) if rest else per_node.delete(node_id)
    return per_node


def _without(mapping: Map[K, V], key: K) -> Map[K, V]:
    return mapping.delete(key) if key in mapping else mapping
