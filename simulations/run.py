"""One seed, start to end: draw the scenario, run the cluster under `MockClock`, inject
the faults, run the clients, heal, wait for quiet, check, and hash the whole trace."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import trio
import trio.testing
from attrs import evolve, frozen

from exo.events.ids import NodeId
from simulations.cluster import Cluster, SimNode
from simulations.invariants import Invariants
from simulations.scenario import Fault, Scenario, Transport, draw_scenario
from simulations.workload import Workload

T = TypeVar("T")

CHECK_INTERVAL = 0.25
# After the quiet period, how long the cluster may take to agree before it is a failure.
CONVERGE_WITHIN = 30.0


@frozen
class SeedResult:
    seed: int
    passed: bool
    faults: int
    elections: int
    trace_hash: str
    violations: tuple[str, ...]
    simulated_seconds: float
    description: str
    kept: Path | None
    # (kind, outcome, detail) of every client operation, in the order they ended.
    ops: tuple[tuple[str, str, str], ...] = ()
    messages: int = 0  # peer messages delivered
    runner_starts: int = 0  # runner processes spawned, over all nodes and incarnations
    forced_nodes: int | None = None  # the --nodes the seed ran with
    forced_transport: Transport | None = None  # the --transport it ran with
    snapshots_installed: int = 0  # peers' snapshots installed by nodes far behind
    torn_writes: int = 0  # crashes that left a torn record or a half-written snapshot
    links: LinkCounts | None = None  # seeds over links only
    # The instances in the most advanced node's final state (the ones the run ended with).
    instances: tuple[str, ...] = ()


@frozen
class LinkCounts:
    """What the real link layer and data plane did on a seed over simulated TCP."""

    connections: int  # TCP connections made
    links: int  # links that passed the key handshake, over all incarnations
    duplicates: int  # links closed as the second of a pair
    replaced: int  # links a newer one replaced (the preferred one of a pair, a redial)
    refused: int  # handshakes refused on the key (members' and the intruder's sides)
    resets: int  # connections reset by the network
    relayed: int  # requests a node sent to an instance on another node
    multi_node: int  # chats served by instances across 2 or 3 nodes
    http: int  # chats answered right through a node's HTTP API (every dialect in turn)


class Trace:
    """Everything that happened, in order, hashed as it goes."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.lines = 0

    def record(self, line: str) -> None:
        self._hash.update(line.encode() + b"\n")
        self.lines += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@contextmanager
def deterministic_trio(seed: int) -> Iterator[None]:
    """Make Trio's scheduler replayable: it shuffles each batch of runnable tasks with a
    generator of its own; seed it, and have it sort the batch by task creation first."""
    import trio._core._run as core

    saved_flag = core._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = core._r.getstate()
    setattr(core, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010 — a Final in trio
    core._r.seed(f"trio-{seed}")
    try:
        yield
    finally:
        setattr(core, "_ALLOW_DETERMINISTIC_SCHEDULING", saved_flag)  # noqa: B010
        core._r.setstate(saved_state)


def sim_root() -> Path:
    """Homes on tmpfs when there is one: fsync there costs nothing real."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="exo-sim-", dir=base))


def run_simulated(seed: int, main: Callable[[Path], Awaitable[T]]) -> T:
    """Run `main(root)` under `MockClock` with Trio's scheduler seeded from `seed`, node
    homes under a fresh `root` removed afterwards: for measurements outside `run_seed`."""
    root = sim_root()
    try:
        with deterministic_trio(seed):
            return trio.run(main, root, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_seed(
    seed: int,
    *,
    keep_dir: Path | None = None,
    keep_always: bool = False,
    scenario: Scenario | None = None,
    nodes: int | None = None,
    transport: Transport | None = None,
) -> SeedResult:
    scenario = scenario or draw_scenario(seed, nodes, transport)
    root = sim_root()
    trace = Trace()
    trace.record(scenario.describe())
    invariants = Invariants()
    counters = {"faults": 0}
    ops: list[tuple[str, str, str]] = []
    try:
        with deterministic_trio(seed):
            clock = trio.testing.MockClock(autojump_threshold=0)
            cluster = trio.run(
                _simulate, scenario, root, trace, invariants, counters, ops, clock=clock
            )
        incarnations = [r for n in cluster.nodes for r in n.incarnations]
        elections = sum(len(r.control.offices) for r in incarnations)
        for node in cluster.nodes:
            log_bytes = (node.home / "events.log").read_bytes()
            trace.record(f"log {node.node_id} {hashlib.sha256(log_bytes).hexdigest()}")
        for violation in invariants.violations:
            trace.record(f"violation {violation}")
        passed = not invariants.violations
        kept = None
        if keep_dir is not None and (keep_always or not passed):
            kept = keep_dir / f"seed-{seed}"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(root, kept)
        return SeedResult(
            seed,
            passed,
            counters["faults"],
            elections,
            trace.hexdigest(),
            tuple(invariants.violations),
            clock.current_time(),
            scenario.describe(),
            kept,
            tuple(ops),
            messages=cluster.network.delivered,
            runner_starts=cluster.runner_starts,
            forced_nodes=nodes,
            forced_transport=transport,
            snapshots_installed=sum(r.control.snapshots_installed for r in incarnations),
            torn_writes=cluster.torn_writes,
            links=_link_counts(cluster, ops),
            instances=_final_instances(cluster),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _final_instances(cluster: Cluster) -> tuple[str, ...]:
    states = [n.incarnations[-1].replica.state for n in cluster.nodes if n.incarnations]
    if not states:
        return ()
    latest = max(states, key=lambda state: state.last_index)
    return tuple(sorted(latest.instances))


def _link_counts(cluster: Cluster, ops: list[tuple[str, str, str]]) -> LinkCounts | None:
    sockets = cluster.sockets
    if sockets is None:
        return None
    everyone = [*cluster.nodes, *([cluster.intruder] if cluster.intruder else [])]
    links = [r.links for n in everyone for r in n.incarnations if r.links is not None]
    planes = [r.data_plane for n in cluster.nodes for r in n.incarnations if r.data_plane]
    return LinkCounts(
        sockets.connections,
        sum(link.stats.links for link in links),
        sum(link.stats.duplicates for link in links),
        sum(link.stats.replaced for link in links),
        sum(link.stats.refused for link in links),
        sockets.resets,
        sum(plane.relayed for plane in planes),
        sum(1 for kind, outcome, _ in ops if kind == "pipeline" and outcome == "ok"),
        sum(1 for kind, outcome, _ in ops if kind in ("chat", "relay") and outcome == "ok"),
    )


def configure_worker(level: int) -> None:
    """Logging for a worker process (spawned workers start with none)."""
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(levelname)-5s %(name)s: %(message)s"
    )


def run_job(job: tuple[int, Path, bool, int | None, Transport | None]) -> SeedResult:
    """`run_seed` for a worker process: (seed, keep_dir, keep_always, nodes, transport)."""
    seed, keep_dir, keep_always, nodes, transport = job
    return run_seed(
        seed, keep_dir=keep_dir, keep_always=keep_always, nodes=nodes, transport=transport
    )


async def _simulate(
    scenario: Scenario,
    root: Path,
    trace: Trace,
    invariants: Invariants,
    counters: dict[str, int],
    ops: list[tuple[str, str, str]],
) -> Cluster:
    cluster = Cluster(scenario, root, trace.record)
    workload = Workload(cluster)
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        nursery.start_soon(_check_continuously, cluster, invariants)
        clients_done = trio.Event()
        nursery.start_soon(_run_clients, workload, scenario, clients_done)
        async with trio.open_nursery() as active:
            for fault in scenario.faults:
                active.start_soon(_inject, cluster, fault, counters)
            for index, at in scenario.joins:
                active.start_soon(_join, cluster, cluster.nodes[index], at)
            for index, at in scenario.leaves:
                active.start_soon(_leave, cluster, cluster.nodes[index], at)
            await trio.sleep(scenario.active)
            active.cancel_scope.cancel()
        # Heal: every partition lifted, every node back up, no more loss.
        trace.record(f"{trio.current_time():.6f} heal")
        cluster.network.heal()
        cluster.network.link = evolve(cluster.network.link, drop=0.0, duplicate=0.0)
        if cluster.sockets is not None:
            cluster.sockets.link = cluster.network.link
            cluster.sockets.reset_rate = 0.0
        for node in cluster.nodes:
            if not node.up:
                await cluster.start(node)
        await trio.sleep(scenario.quiet)
        await clients_done.wait()
        problem = await _wait_converged(cluster, invariants)
        if problem is not None:
            invariants.fail(f"no agreement {CONVERGE_WITHIN:g} s after healing: {problem}")
        for result in workload.results:
            ops.append((result.op.kind, result.outcome, result.detail))
            trace.record(
                f"op {result.op.at:.6f} {result.op.node} {result.op.kind} {result.outcome}"
            )
        invariants.check(cluster)
        invariants.check_final(cluster, workload)
        cluster.shutdown()
        nursery.cancel_scope.cancel()
    return cluster


async def _run_clients(workload: Workload, scenario: Scenario, done: trio.Event) -> None:
    await workload.run(scenario.ops)
    done.set()


async def _wait_converged(cluster: Cluster, invariants: Invariants) -> str | None:
    problem: str | None = "not checked"
    with trio.move_on_after(CONVERGE_WITHIN):
        while (problem := invariants.converged(cluster)) is not None:  # noqa: ASYNC110 — polls a predicate over many nodes
            await trio.sleep(CHECK_INTERVAL)
    return problem


async def _check_continuously(cluster: Cluster, invariants: Invariants) -> None:
    while True:
        invariants.check(cluster)
        await trio.sleep(CHECK_INTERVAL)


async def _join(cluster: Cluster, node: SimNode, at: float) -> None:
    await trio.sleep(at)
    if not node.up:
        await cluster.start(node)


async def _leave(cluster: Cluster, node: SimNode, at: float) -> None:
    await trio.sleep(at)
    node.gone = True
    cluster.crash(node)


async def _inject(cluster: Cluster, fault: Fault, counters: dict[str, int]) -> None:
    await trio.sleep(fault.at)
    nodes = [cluster.nodes[i] for i in fault.nodes]
    network = cluster.network
    match fault.kind:
        case "crash" | "corrupt":
            node = nodes[0]
            if not node.up:
                return
            counters["faults"] += 1
            cluster.crash(node)
            if fault.kind == "corrupt":
                cluster.damage_log(node)
            await trio.sleep(fault.duration)
            if not node.up:
                await cluster.start(node)
        case "runner_crash":
            if cluster.kill_runner(nodes[0]):
                counters["faults"] += 1
        case "partition" | "isolate" | "one_way" | "bridge":
            pairs = _blocked_pairs(cluster, fault)
            if not pairs:
                return
            counters["faults"] += 1
            for sender, receiver in pairs:
                network.block(sender, receiver)
            await trio.sleep(fault.duration)
            for sender, receiver in pairs:
                network.unblock(sender, receiver)


def _blocked_pairs(cluster: Cluster, fault: Fault) -> list[tuple[NodeId, NodeId]]:
    ids = [n.node_id for n in cluster.nodes]
    side = {ids[i] for i in fault.nodes}
    match fault.kind:
        case "one_way":
            return [(ids[s], ids[t]) for s in fault.nodes for t in fault.targets]
        case "bridge":
            other = [i for i in ids if i not in side and i != ids[fault.targets[0]]]
            return [(a, b) for a in sorted(side) for b in other] + [
                (b, a) for a in sorted(side) for b in other
            ]
        case _:
            other = [i for i in ids if i not in side]
            return [(a, b) for a in sorted(side) for b in other] + [
                (b, a) for a in sorted(side) for b in other
            ]
