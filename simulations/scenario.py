"""Swarm testing: one seed draws the whole scenario, cluster size, fault rates, the fault
schedule and the client workload, from one random generator.

Each fault kind is switched on or off per seed (and given its own rate), so some seeds
hammer one weakness while others mix everything, which finds more than one fixed mix.
"""

from __future__ import annotations

import random
from typing import Literal

from attrs import evolve, frozen

from simulations.network import LinkModel

# "corrupt" (a crash that also damages a record in the middle of the log) is only
# scripted by tests; "bridge" is drawn from a generator of its own (`_draw_bridges`):
# adding either to FAULT_KINDS would move every other draw.
FaultKind = Literal["crash", "partition", "one_way", "isolate", "runner_crash", "corrupt", "bridge"]
# "relay" and "pipeline" run on seeds whose transport is links only: a chat served by an
# instance on another node (through the data plane), and one placed across 2 or 3 nodes.
OpKind = Literal["chat", "place", "delete", "relay", "pipeline"]
# "messages": the seeded message queue of `network.py` (loss, duplicates, reordering);
# "links": simulated TCP (`sockets.py`) under the real link layer.
Transport = Literal["messages", "links"]
FAULT_KINDS: tuple[FaultKind, ...] = ("crash", "partition", "one_way", "isolate", "runner_crash")

GIB = 1024**3


@frozen
class Fault:
    at: float
    kind: FaultKind
    # crash/isolate/runner_crash: one node; partition: one side; one_way: senders.
    nodes: tuple[int, ...]
    duration: float
    # one_way: the receivers that stop hearing `nodes`.
    targets: tuple[int, ...] = ()


@frozen
class Op:
    at: float
    node: int
    kind: OpKind


@frozen
class NodeSpec:
    memory_total: int
    memory_available: int
    cpu_cores: int


@frozen
class Scenario:
    seed: int
    nodes: tuple[NodeSpec, ...]
    link: LinkModel
    active: float  # seconds of faults and workload
    quiet: float  # seconds after healing before convergence must hold
    faults: tuple[Fault, ...]
    ops: tuple[Op, ...]
    # Snapshot interval and records kept (exo's defaults, or small enough to compact and
    # ship snapshots many times in one run).
    snapshot_every: int = 10_000
    snapshot_keep: int = 8192
    # Membership changes: (node, when) it first starts (a join; others start at 0), and
    # (node, when) it stops for good (a leave: not restarted at the heal).
    joins: tuple[tuple[int, float], ...] = ()
    leaves: tuple[tuple[int, float], ...] = ()
    # Compaction by size: once the records since the snapshot pass `snapshot_bytes`,
    # keeping no more than `snapshot_keep_bytes` of them.
    snapshot_bytes: int = 32 * 1024 * 1024
    snapshot_keep_bytes: int = 16 * 1024 * 1024
    # Snapshot transfer: chunk size and bytes asked for at once (small, so that the
    # simulator's snapshots travel as several pipelined chunks).
    snapshot_chunk: int = 1024 * 1024
    snapshot_window: int = 4 * 1024 * 1024
    transport: Transport = "messages"
    # Links: the chance that a delivery resets its connection, and whether a node with
    # the wrong cluster key keeps dialling the cluster.
    reset_rate: float = 0.0
    intruder: bool = False
    # Links: members find each other by multicast beacons instead of configured addresses.
    discovery: bool = False

    def describe(self) -> str:
        kinds = sorted({f.kind for f in self.faults})
        return (
            f"seed {self.seed}: {len(self.nodes)} nodes, {len(self.faults)} faults "
            f"({', '.join(kinds) or 'none'}), {len(self.ops)} client ops, "
            + (
                f"drop {self.link.drop:.2f}, duplicate {self.link.duplicate:.2f}, "
                if self.transport == "messages"
                else ""
            )
            + f"latency {self.link.latency * 1000:.1f}+{self.link.jitter * 1000:.1f} ms"
            + (
                f", snapshot every {self.snapshot_every} keeping {self.snapshot_keep}"
                if self.snapshot_every < 10_000
                else ""
            )
            + (
                f", snapshot every {self.snapshot_bytes} bytes keeping {self.snapshot_keep_bytes}"
                if self.snapshot_bytes < 1024 * 1024
                else ""
            )
            + (f", {len(self.joins)} joining late" if self.joins else "")
            + (f", {len(self.leaves)} leaving" if self.leaves else "")
            + (
                f", over links (resets {self.reset_rate:g})"
                + (", intruder" if self.intruder else "")
                if self.transport == "links"
                else ""
            )
        )


MAX_NODES = 64


def draw_scenario(
    seed: int, nodes: int | None = None, transport: Transport | None = None
) -> Scenario:
    """The scenario of `seed`; `nodes` fixes the cluster size (2 to 64) instead of drawing
    it from 2 to 7, and `transport` the transport instead of drawing it, with everything
    else drawn the same way."""
    rng = random.Random(f"scenario-{seed}")
    size = rng.randint(2, 7)
    if nodes is not None:
        if not 2 <= nodes <= MAX_NODES:
            raise ValueError(f"a simulated cluster has 2 to {MAX_NODES} nodes, not {nodes}")
        size = nodes
    specs = tuple(
        NodeSpec(
            memory_total=(total := rng.choice((8, 16, 32, 64)) * GIB),
            memory_available=int(total * rng.uniform(0.5, 0.9)),
            cpu_cores=rng.choice((4, 8, 10, 16)),
        )
        for _ in range(size)
    )
    link = LinkModel(
        latency=rng.uniform(0.0002, 0.02),
        jitter=rng.choice((0.0005, 0.002, 0.01, 0.05)),
        drop=rng.choice((0.0, 0.0, 0.01, 0.05, 0.15)),
        duplicate=rng.choice((0.0, 0.02, 0.1)),
    )
    active = rng.uniform(15.0, 45.0)
    enabled: list[FaultKind] = [kind for kind in FAULT_KINDS if rng.random() < 0.6]
    faults: list[Fault] = []
    for kind in enabled:
        for _ in range(rng.randint(1, 4)):
            faults.append(_draw_fault(rng, kind, size, active))
    faults.extend(_draw_bridges(seed, size, active))
    faults.sort(key=lambda f: (f.at, f.kind, f.nodes))
    ops = tuple(
        sorted(
            (
                Op(
                    at=rng.uniform(3.0, active),
                    node=rng.randrange(size),
                    kind=rng.choices(("chat", "place", "delete"), weights=(6, 2, 1))[0],
                )
                for _ in range(rng.randint(5, 30))
            ),
            key=lambda o: (o.at, o.node, o.kind),
        )
    )
    # Drawn from a generator of their own, so every other draw stays what it was.
    every, keep, by_size = random.Random(f"snapshots-{seed}").choice(
        (
            (10_000, 8192, False),
            (10_000, 8192, False),
            (40, 16, False),
            (12, 4, False),
            (10_000, 8192, True),
        )
    )
    joins, leaves = _draw_membership(seed, size, active)
    scenario = Scenario(
        seed,
        specs,
        link,
        active,
        15.0,
        tuple(faults),
        ops,
        every,
        keep,
        joins,
        leaves,
        snapshot_bytes=8000 if by_size else 32 * 1024 * 1024,
        snapshot_keep_bytes=3000 if by_size else 16 * 1024 * 1024,
        snapshot_chunk=1000,
        snapshot_window=4000,
    )
    return _draw_transport(scenario, transport)


def _draw_transport(scenario: Scenario, forced: Transport | None) -> Scenario:
    """Half the seeds run over simulated TCP and the real link layer, with some chats
    relayed and some instances across 2 or 3 nodes, from a generator of their own."""
    rng = random.Random(f"transport-{scenario.seed}")
    over_links = rng.random() < 0.5
    if (forced or ("links" if over_links else "messages")) == "messages":
        return scenario
    size = len(scenario.nodes)
    extra = [
        Op(
            at=rng.uniform(3.0, scenario.active),
            node=rng.randrange(size),
            kind=rng.choice(("relay", "pipeline")),
        )
        for _ in range(rng.randint(2, 8))
    ]
    ops = tuple(sorted((*scenario.ops, *extra), key=lambda o: (o.at, o.node, o.kind)))
    return evolve(
        scenario,
        transport="links",
        ops=ops,
        reset_rate=rng.choice((0.0, 0.0, 0.0005, 0.002)),
        intruder=rng.random() < 0.4,
        discovery=rng.random() < 0.5,
    )


def _draw_membership(
    seed: int, size: int, active: float
) -> tuple[tuple[tuple[int, float], ...], tuple[tuple[int, float], ...]]:
    """Nodes that join late (a quarter of the seeds) and one that leaves for good (a
    fifth of the seeds of 3 nodes or more), from a generator of their own."""
    rng = random.Random(f"members-{seed}")
    everyone = list(range(size))
    joins: list[tuple[int, float]] = []
    if size >= 3 and rng.random() < 0.25:
        for node in sorted(rng.sample(everyone, rng.randint(1, max(1, size // 3)))):
            joins.append((node, rng.uniform(2.0, active / 2)))
    leaves: list[tuple[int, float]] = []
    staying = [n for n in everyone if n not in {j for j, _ in joins}]
    if size >= 3 and len(staying) >= 3 and rng.random() < 0.2:
        leaves.append((rng.choice(staying), rng.uniform(5.0, active)))
    return tuple(joins), tuple(leaves)


def _draw_bridges(seed: int, size: int, active: float) -> list[Fault]:
    """Non-transitive partitions in about a third of the seeds: two sides that cannot
    hear each other, and one node (the bridge) that both sides reach."""
    rng = random.Random(f"bridges-{seed}")
    if size < 3 or rng.random() >= 0.35:
        return []
    bridges = []
    for _ in range(rng.randint(1, 3)):
        bridge = rng.randrange(size)
        others = [n for n in range(size) if n != bridge]
        side = tuple(sorted(rng.sample(others, rng.randint(1, len(others) - 1))))
        at, duration = rng.uniform(1.0, active - 1.0), rng.uniform(3.0, 12.0)
        bridges.append(Fault(at, "bridge", side, duration, (bridge,)))
    return bridges


def _draw_fault(rng: random.Random, kind: FaultKind, size: int, active: float) -> Fault:
    at = rng.uniform(1.0, active - 1.0)
    duration = rng.uniform(1.0, 12.0)
    everyone = list(range(size))
    match kind:
        case "partition":
            side = tuple(sorted(rng.sample(everyone, rng.randint(1, max(1, size - 1)))))
            return Fault(at, kind, side, duration)
        case "one_way":
            senders = tuple(sorted(rng.sample(everyone, rng.randint(1, max(1, size - 1)))))
            others = [n for n in everyone if n not in senders]
            targets = tuple(sorted(rng.sample(others, rng.randint(1, len(others)))))
            return Fault(at, kind, senders, duration, targets)
        case _:
            return Fault(at, kind, (rng.randrange(size),), duration)
