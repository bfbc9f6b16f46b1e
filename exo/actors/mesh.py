"""The mesh actor: link with every registered node, not only the ones configured.

Nodes started with one seed (`--peers A`, where multicast does not pass) would otherwise
link only to A: a star, whose other nodes cannot relay to each other and, when A dies,
each elect themselves. The replicated state already says where every node is: its
profile has its peer port, and the links other nodes measured have the address they
reach it at. So each node dials the registered nodes it has no link with; the lower id
of a pair dials, as discovery does, and a link once made is remembered in HOME/peers.json.
"""

from __future__ import annotations

from collections.abc import Callable

from exo.actors.replica import Replica
from exo.events.ids import NodeId
from exo.events.state import State


def mesh_addresses(state: State, me: NodeId, linked: set[NodeId]) -> dict[NodeId, str]:
    """HOST:PORT of each registered node with a higher id than `me` and no link to it,
    where some node has measured an address for it."""
    wanted: dict[NodeId, str] = {}
    for peer, profile in sorted(state.nodes.items()):
        if peer <= me or peer in linked:
            continue
        seen = sorted(
            {
                per_peer[peer].address
                for observer, per_peer in state.links.items()
                if observer != peer and peer in per_peer and per_peer[peer].address
            }
        )
        if seen:
            host = f"[{seen[0]}]" if ":" in seen[0] else seen[0]
            wanted[peer] = f"{host}:{profile.peer_port}"
    return wanted


async def run_mesh(
    replica: Replica,
    me: NodeId,
    linked: Callable[[], list[NodeId]],
    dial: Callable[[str], None],
) -> None:
    """Dial every address `mesh_addresses` names, once each (the link layer redials)."""
    dialled: set[str] = set()
    while True:
        for address in mesh_addresses(replica.state, me, set(linked())).values():
            if address not in dialled:
                dialled.add(address)
                dial(address)
        await replica.wait_changed()
