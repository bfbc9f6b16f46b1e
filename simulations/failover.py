"""Time a simulated cluster to form and to agree on a new master after its master crashes:
for the 64-node test and `benchmarks/control_plane.py`."""

from __future__ import annotations

from pathlib import Path

import trio
from attrs import frozen

from simulations.cluster import Cluster, SimNode
from simulations.network import LinkModel
from simulations.run import run_simulated
from simulations.scenario import GIB, NodeSpec, Scenario

POLL = 0.05


@frozen
class Failover:
    nodes: int
    formed_after: float  # simulated seconds from start to one master all follow
    agreed_after: float  # simulated seconds from the master's crash to the next such
    messages: int  # peer messages delivered over the whole run


def measure_failover(nodes: int, seed: int = 0, limit: float = 60.0) -> Failover:
    spec = NodeSpec(16 * GIB, 12 * GIB, 8)
    scenario = Scenario(seed, (spec,) * nodes, LinkModel(), limit, 0.0, (), ())
    return run_simulated(seed, lambda root: _measure(scenario, root, limit))


async def _measure(scenario: Scenario, root: Path, limit: float) -> Failover:
    cluster = Cluster(scenario, root, lambda _: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        started = trio.current_time()
        with trio.fail_after(limit):
            master = await _agreed(cluster)
        formed = trio.current_time() - started
        cluster.crash(master)
        crashed = trio.current_time()
        with trio.fail_after(limit):
            await _agreed(cluster)
        agreed = trio.current_time() - crashed
        cluster.shutdown()
        nursery.cancel_scope.cancel()
    return Failover(len(scenario.nodes), formed, agreed, cluster.network.delivered)


async def _agreed(cluster: Cluster) -> SimNode:
    """Wait until one live node leads and every other live node follows it, in sync."""
    while True:
        up = [n for n in cluster.nodes if n.running is not None]
        leaders = [n for n in up if n.running is not None and n.running.control.leading]
        if len(leaders) == 1 and leaders[0].running is not None:
            ballot = leaders[0].running.control.ballot
            if all(
                n.running is not None
                and n.running.control.ballot == ballot
                and n.running.control.synced
                for n in up
            ):
                return leaders[0]
        await trio.sleep(POLL)
