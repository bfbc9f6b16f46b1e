"""Multi-node instances get MLX ring addresses from the measured links, and losing a node
deletes its instances and places them again on the nodes left."""

import pytest

from exo.actors.decide import Rejected, decide
from exo.actors.placement import RING_SLOTS, PlacementError, place, ring_addresses
from exo.events.commands import Envelope, MarkNodeDown, PlaceInstance
from exo.events.events import (
    Event,
    IndexedEvent,
    InstanceCreated,
    InstanceDeleted,
    LinksMeasured,
    MasterElected,
    NodeDown,
    NodeProfiled,
)
from exo.events.facts import LinkStats, NodeProfile
from exo.events.ids import CommandId, NodeId
from exo.events.state import State, apply
from exo.models.cards import BUNDLED_MODEL, CARDS

GIB = 2**30
CARD = CARDS[BUNDLED_MODEL]
A, B, C = NodeId("a"), NodeId("b"), NodeId("c")
ADDRESSES = {A: "10.0.0.1", B: "10.0.0.2", C: "10.0.0.3"}


def build(*events: Event) -> State:
    state = State()
    for event in events:
        state = apply(state, IndexedEvent(state.last_index + 1, 1, event))
    return state


def cluster(free_gib: dict[NodeId, float], measured: bool = True) -> list[Event]:
    events: list[Event] = [MasterElected(A, 1)]
    for node, gib in free_gib.items():
        profile = NodeProfile("h", "linux", 2, 32 * GIB, int(gib * GIB), "cpu", 1, 2)
        events.append(NodeProfiled(node, profile))
    if measured:
        for node in free_gib:
            links = tuple(
                LinkStats(peer, 200, None, ADDRESSES[peer]) for peer in free_gib if peer != node
            )
            events.append(LinksMeasured(node, links))
    return events


def envelope(command: object, origin: NodeId = A, cid: str = "cmd-1") -> Envelope:
    return Envelope(CommandId(cid), origin, command)  # type: ignore[arg-type]


def test_a_multi_node_instance_gets_one_ring_address_per_rank() -> None:
    state = build(*cluster({A: 8, B: 8, C: 8}))
    (created,) = decide(state, envelope(PlaceInstance(BUNDLED_MODEL, min_nodes=3)))  # type: ignore[misc]
    assert isinstance(created, InstanceCreated)
    instance = created.instance
    hosts = [address.rpartition(":")[0] for address in instance.ring]
    assert hosts == [ADDRESSES[s.node_id] for s in instance.shards]
    ports = [int(address.rpartition(":")[2]) for address in instance.ring]
    assert all(31700 <= p < 31700 + RING_SLOTS for p in ports)
    # A one-node instance needs no ring.
    (alone,) = decide(state, envelope(PlaceInstance(BUNDLED_MODEL), cid="cmd-2"))  # type: ignore[misc]
    assert isinstance(alone, InstanceCreated) and alone.instance.ring == ()


def test_ring_addresses_skip_those_live_instances_hold() -> None:
    history = cluster({A: 8, B: 8, C: 8})
    (created,) = decide(build(*history), envelope(PlaceInstance(BUNDLED_MODEL, min_nodes=3)))  # type: ignore[misc]
    state = build(*history, created)
    shards = created.instance.shards  # type: ignore[union-attr]
    # Same seed, same nodes: the next ring moves on instead of reusing a taken address.
    ring = ring_addresses(state, shards, state.last_index - 1)
    assert not set(ring) & set(created.instance.ring)  # type: ignore[union-attr]
    assert len(set(ring)) == 3


def test_nodes_on_one_host_with_one_base_port_get_distinct_ports() -> None:
    same_host = build(
        *cluster({A: 8, B: 8, C: 8}),
        *(
            LinksMeasured(
                n, tuple(LinkStats(p, 200, None, "127.0.0.1") for p in (A, B, C) if p != n)
            )
            for n in (A, B, C)
        ),
    )
    placement = place(same_host, CARD, "pipeline", 3)
    ring = ring_addresses(same_host, placement.shards, 63)
    assert len(set(ring)) == 3
    assert all(a.startswith("127.0.0.1:") for a in ring)


def test_a_node_nobody_measured_cannot_join_a_ring() -> None:
    state = build(*cluster({A: 8, B: 8}, measured=False))
    decision = decide(state, envelope(PlaceInstance(BUNDLED_MODEL, min_nodes=2)))
    assert isinstance(decision, Rejected)
    assert "no address known for node" in decision.reason
    with pytest.raises(PlacementError):
        ring_addresses(state, place(state, CARD, "pipeline", 2).shards, 0)


def test_losing_a_node_deletes_its_instances_and_places_them_again() -> None:
    history = cluster({A: 8, B: 8, C: 8})
    placing = envelope(PlaceInstance(BUNDLED_MODEL, "tensor", 3, nodes=(A, B, C)))
    (created,) = decide(build(*history), placing)  # type: ignore[misc]
    assert isinstance(created, InstanceCreated)
    state = build(*history, created)
    events = decide(state, envelope(MarkNodeDown(C), cid="cmd-down"))
    assert isinstance(events, list)
    down, deleted, replaced = events
    assert down == NodeDown(C)
    assert deleted == InstanceDeleted(created.instance.instance_id)
    assert isinstance(replaced, InstanceCreated)
    assert replaced.instance.strategy == "tensor"
    assert C not in {s.node_id for s in replaced.instance.shards}
    assert replaced.instance.instance_id != created.instance.instance_id
    # Deterministic: the same command decides the same replacement.
    assert decide(state, envelope(MarkNodeDown(C), cid="cmd-down")) == events
    # Instances elsewhere are untouched; a node already gone changes nothing.
    after = build(*history, created, *events)
    assert decide(after, envelope(MarkNodeDown(C), cid="cmd-again")) == []


def test_an_instance_that_fits_nowhere_is_only_deleted() -> None:
    history = cluster({A: 0.1, B: 8})
    (created,) = decide(build(*history), envelope(PlaceInstance(BUNDLED_MODEL, nodes=(B,))))  # type: ignore[misc]
    state = build(*history, created)
    events = decide(state, envelope(MarkNodeDown(B), cid="cmd-down"))
    assert events == [NodeDown(B), InstanceDeleted(created.instance.instance_id)]  # type: ignore[union-attr]


def test_only_the_master_marks_nodes_down() -> None:
    state = build(*cluster({A: 8, B: 8}))
    assert isinstance(decide(state, envelope(MarkNodeDown(B), origin=B)), Rejected)
