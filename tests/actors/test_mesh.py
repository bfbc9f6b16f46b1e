"""Which nodes a node dials to turn a star of seed links into a full mesh."""

from immutables import Map

from exo.actors.mesh import mesh_addresses
from exo.events.facts import LinkStats, NodeProfile
from exo.events.ids import NodeId
from exo.events.state import State

A, B, C, D = (NodeId(n) for n in ("a", "b", "c", "d"))


def profile(peer_port: int) -> NodeProfile:
    return NodeProfile("h", "linux-x86_64", 2, 2**34, 2**33, "cpu", 1, peer_port)


def star() -> State:
    """A is the seed everyone dialled; A measured where B, C and D are."""
    nodes = {A: profile(7000), B: profile(7001), C: profile(7002), D: profile(7003)}
    seen_by_a = {
        B: LinkStats(B, 100, None, "10.0.0.2"),
        C: LinkStats(C, 100, None, "10.0.0.3"),
        D: LinkStats(D, 100, None, "fe80::4"),
    }
    links = {A: Map(seen_by_a), B: Map({A: LinkStats(A, 100, None, "10.0.0.1")})}
    return State(nodes=Map(nodes), links=Map(links))


def test_the_lower_id_dials_each_registered_node_it_has_no_link_with() -> None:
    state = star()
    assert mesh_addresses(state, B, {A}) == {C: "10.0.0.3:7002", D: "[fe80::4]:7003"}
    assert mesh_addresses(state, C, {A}) == {D: "[fe80::4]:7003"}
    assert mesh_addresses(state, D, {A}) == {}  # the highest id waits to be dialled
    assert mesh_addresses(state, B, {A, C}) == {D: "[fe80::4]:7003"}


def test_a_node_nobody_has_measured_is_not_dialled() -> None:
    state = star()
    state = State(nodes=state.nodes.set(NodeId("e"), profile(7004)), links=state.links)
    assert NodeId("e") not in mesh_addresses(state, B, {A})
