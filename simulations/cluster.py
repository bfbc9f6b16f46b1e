"""Simulated nodes: real `run_node` incarnations on the simulated network and environment,
crashed by cancelling them (their disk, the home directory, stays) and restarted.

A crash can also tear the disk (drawn per seed from a generator of its own): the log
gets the first bytes of a record that was being written and never synced, and a
snapshot being written is left half done, as power loss leaves them; what was synced,
and so everything the node ever acknowledged or sent, stays. Each node's clock runs at
its own rate (within 1 %) from its own offset, so nothing may compare times across
nodes.

On seeds whose transport is links, each node has an address and simulated TCP
(`sockets.py`): nodes are configured with each other's addresses (`--peers`) and run
their real link layer, data plane and file share; a crash resets the node's connections.
Such a seed may also run an intruder: a node with the wrong cluster key that keeps
dialling every member and must never join."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import trio
from attrs import define, evolve, field

from exo.actors.network import ControlTimings
from exo.actors.wire import PeerMessage
from exo.events.ids import NodeId
from exo.node import Connect, NodeConfig, RunningNode, run_node
from simulations.engine import SimModelStore, SimProcess
from simulations.environment import SimEnvironment, SimHost
from simulations.http import API_PORT, api_key
from simulations.network import Deliver, Record, SimNetwork
from simulations.scenario import NodeSpec, Scenario
from simulations.sockets import SimHostSockets, SimSockets

PEER_PORT = 52416
DISCOVERY_PORT = 52417


@define
class SimNode:
    index: int
    node_id: NodeId
    home: Path
    host: SimHost
    # Its IP address on the simulated network (seeds over links).
    address: str = ""
    sockets: SimHostSockets | None = None
    running: RunningNode | None = None
    env: SimEnvironment | None = None
    scope: trio.CancelScope | None = None
    incarnations: list[RunningNode] = field(factory=list)
    # Client operations in flight against this incarnation: a crash fails them, as a
    # dropped connection would.
    clients: set[trio.CancelScope] = field(factory=set)
    # The last crash tore the disk: tear it before the next start (the old incarnation
    # is gone by then, so nothing it still had shielded writes after the damage).
    torn: bool = False
    # Left the cluster for good: never started again.
    gone: bool = False

    @property
    def up(self) -> bool:
        return self.running is not None


class Cluster:
    def __init__(self, scenario: Scenario, root: Path, record: Record) -> None:
        self.scenario = scenario
        self._record = record
        self.network = SimNetwork(random.Random(f"network-{scenario.seed}"), scenario.link, record)
        id_rng = random.Random(f"ids-{scenario.seed}")
        clocks = random.Random(f"clocks-{scenario.seed}")
        self._disk = random.Random(f"disk-{scenario.seed}")
        self.torn_writes = 0
        self.nodes: list[SimNode] = []
        for index, spec in enumerate(scenario.nodes):
            node_id = NodeId(f"node-{id_rng.getrandbits(48):012x}")
            self.nodes.append(self._new_node(root, index, node_id, _host(index, spec, clocks)))
            self.network.add_member(node_id)
        self.sockets: SimSockets | None = None
        self.intruder: SimNode | None = None
        self._by_address = {n.address: n.node_id for n in self.nodes}
        if scenario.transport == "links":
            self.sockets = SimSockets(
                random.Random(f"sockets-{scenario.seed}"), scenario.link, self._passes, record
            )
            self.sockets.reset_rate = scenario.reset_rate
            self.network.on_change.append(self.sockets.changed)
            if scenario.intruder:
                index = len(self.nodes)
                node_id = NodeId(f"node-{id_rng.getrandbits(48):012x}")
                host = _host(index, scenario.nodes[0], clocks)
                self.intruder = self._new_node(root, index, node_id, host)
        self._nursery: trio.Nursery | None = None
        self._current_tokens: dict[NodeId, object] = {}
        self._environments: list[SimEnvironment] = []

    @staticmethod
    def _new_node(root: Path, index: int, node_id: NodeId, host: SimHost) -> SimNode:
        home = root / f"node-{index}"
        home.mkdir(parents=True)
        (home / "node_id").write_text(node_id + "\n")
        address = f"10.0.{index // 200}.{index % 200 + 1}"
        return SimNode(index, node_id, home, host, address)

    def _passes(self, source: str, target: str) -> bool:
        """Whether the partitions let bytes from one address to another (the intruder's
        are never blocked)."""
        a, b = self._by_address.get(source), self._by_address.get(target)
        return a is None or b is None or not self.network.blocked(a, b)

    def linked(self, a: NodeId, b: NodeId) -> bool:
        """Messages pass both ways between a and b now: on the message network, both up
        and no partition; over links, also a live link that each side holds (a link
        closed as dead stays down until redialled, partition or not)."""
        if not self.network.linked(a, b):
            return False
        if self.sockets is None:
            return True
        ends = {n.node_id: n.running for n in self.nodes}
        first, second = ends.get(a), ends.get(b)
        return (
            first is not None
            and second is not None
            and first.links is not None
            and second.links is not None
            and b in first.links.linked()
            and a in second.links.linked()
        )

    @property
    def runner_starts(self) -> int:
        return sum(len(env.spawned) for env in self._environments)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.network.run)
            late = {index for index, _ in self.scenario.joins}
            for node in self.nodes:
                if node.index not in late:
                    await self.start(node)
            if self.intruder is not None:
                await self.start(self.intruder)
            task_status.started()

    async def start(self, node: SimNode) -> None:
        assert self._nursery is not None and not node.up
        if node.gone:
            return
        if node.torn:
            node.torn = False
            self._tear(node)
        self._record(f"{trio.current_time():.6f} start {node.node_id}")
        await self._nursery.start(self._incarnation, node)

    def crash(self, node: SimNode) -> None:
        if node.scope is None:
            return
        self._record(f"{trio.current_time():.6f} crash {node.node_id}")
        node.torn = self._disk.random() < 0.5
        self.network.disconnect(node.node_id)
        node.scope.cancel()
        # After the cancel, so no task of the dead incarnation wakes to a reset first.
        if self.sockets is not None and node.sockets is not None:
            node.sockets.dead = True
            self.sockets.crash(node.address)
        node.scope = None
        node.running = None
        node.env = None
        for scope in node.clients:
            scope.cancel()

    def _tear(self, node: SimNode) -> None:
        """Leave what power loss mid-write leaves: part of an unsynced record at the end of
        the log, or a half-written snapshot beside the real one."""
        self.torn_writes += 1
        record = b'%08x {"command_id":null,"event":{"node_id":"%s","type":"NodeDown"},' % (
            self._disk.getrandbits(32),
            node.node_id.encode(),
        )
        torn = record[: self._disk.randint(1, len(record))]
        if self._disk.random() < 0.5:
            with open(node.home / "events.log", "ab") as f:
                f.write(torn)
            self._record(f"{trio.current_time():.6f} torn-log {node.node_id} {len(torn)}")
        else:
            (node.home / "events.snapshot.writing").write_bytes(torn)
            self._record(f"{trio.current_time():.6f} torn-snapshot {node.node_id} {len(torn)}")

    def damage_log(self, node: SimNode) -> None:
        """Flip one checksum digit of the record in the middle of the node's log: damage
        that only a checksum finds, before the last record (so not a torn write)."""
        path = node.home / "events.log"
        lines = path.read_bytes().split(b"\n")
        if len(lines) < 4:
            return
        middle = len(lines) // 2
        digit = lines[middle][:1]
        lines[middle] = (b"0" if digit != b"0" else b"1") + lines[middle][1:]
        path.write_bytes(b"\n".join(lines))
        self._record(f"{trio.current_time():.6f} damage-log {node.node_id} record {middle + 1}")

    def kill_runner(self, node: SimNode) -> bool:
        """Kill the newest live runner process on `node`; False when there is none."""
        if node.env is None:
            return False
        for process in reversed(node.env.spawned):
            if process.returncode is None:
                self._record(f"{trio.current_time():.6f} kill-runner {node.node_id}")
                process.kill()
                return True
        return False

    def shutdown(self) -> None:
        for node in [*self.nodes, *([self.intruder] if self.intruder else [])]:
            if node.scope is not None:
                node.scope.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _incarnation(self, node: SimNode, *, task_status: trio.TaskStatus[None]) -> None:
        number = len(node.incarnations)
        config = NodeConfig(
            home=node.home,
            models_dir=node.home / "models",
            serve_api=False,
            ready_timeout=20.0,
            profile_interval=2.0,
            archive_log=True,
            timings=evolve(
                ControlTimings(),
                snapshot_every=self.scenario.snapshot_every,
                snapshot_keep=self.scenario.snapshot_keep,
                snapshot_bytes=self.scenario.snapshot_bytes,
                snapshot_keep_bytes=self.scenario.snapshot_keep_bytes,
                snapshot_chunk=self.scenario.snapshot_chunk,
                snapshot_window=self.scenario.snapshot_window,
            ),
        )
        connect: Connect | None = self._connect
        node.sockets = None
        if self.sockets is not None:
            connect = None
            node.sockets = self.sockets.host(node.address)
            self.network.connect(node.node_id, _nowhere)  # up, for the checks of who is linked
            config = evolve(config, **self._link_config(node))
        with trio.CancelScope() as scope:
            node.scope = scope
            async with trio.open_nursery() as processes:
                rng = random.Random(f"node-{self.scenario.seed}-{node.index}-{number}")
                env = SimEnvironment(node.home, rng, node.host, processes, node.sockets)
                self._environments.append(env)
                running: RunningNode = await processes.start(
                    partial(
                        run_node,
                        config,
                        env,
                        connect=connect,
                        store=SimModelStore(node.home / "models"),
                    )
                )
                node.env = env
                node.running = running
                node.incarnations.append(running)
                task_status.started()

    def _link_config(self, node: SimNode) -> dict[str, object]:
        """Peer links of a seed over links: every member's address configured, or (with
        discovery) none and multicast beacons; the seed's cluster key. The intruder holds
        another key and always has the members' addresses, so that it keeps dialling."""
        intruding = node is self.intruder
        key = f"not-the-key-{self.scenario.seed}" if intruding else f"key-{self.scenario.seed}"
        peers = tuple(f"{n.address}:{PEER_PORT}" for n in self.nodes if n is not node)
        discovery = self.scenario.discovery
        return {
            "peers": peers if intruding or not discovery else (),
            "peer_host": "0.0.0.0",
            "peer_port": PEER_PORT,
            "discovery_port": DISCOVERY_PORT if discovery else None,
            "namespace": "sim",
            "cluster_key": key,
            # Members serve the HTTP API, which the simulated clients call over links,
            # with the seed's key.
            "serve_api": not intruding,
            "api_host": "0.0.0.0",
            "api_port": API_PORT,
            "api_keys": (api_key(self.scenario.seed),),
        }

    def _connect(self, node_id: NodeId, deliver: Deliver) -> _Endpoint:
        token = object()
        self.network.connect(node_id, deliver)
        return _Endpoint(self.network, node_id, token, self._current_tokens)


def _nowhere(sender: NodeId, message: PeerMessage) -> None:
    """Seeds over links deliver through the node's own link layer, never the queue."""


class _Endpoint:
    """A node incarnation's network endpoint; a crashed incarnation's sends go nowhere."""

    def __init__(
        self, network: SimNetwork, node_id: NodeId, token: object, tokens: dict[NodeId, object]
    ) -> None:
        self._network = network
        self._node_id = node_id
        self._token = token
        self._tokens = tokens
        tokens[node_id] = token

    def send(self, to: NodeId, message: PeerMessage) -> None:
        if self._tokens.get(self._node_id) is self._token and self._network.is_connected(
            self._node_id
        ):
            self._network.send(self._node_id, to, message)

    def peers(self) -> list[NodeId]:
        return self._network.peers_of(self._node_id)

    def expecting_peers(self) -> bool:
        return bool(self.peers())


def _host(index: int, spec: NodeSpec, clocks: random.Random) -> SimHost:
    return SimHost(
        clock_rate=1.0 + clocks.uniform(-0.01, 0.01),
        clock_offset=clocks.uniform(0.0, 10_000.0),
        hostname=f"sim-{index}",
        platform="linux-x86_64",
        cpu_cores=spec.cpu_cores,
        accelerator="cpu",
        memory_total=spec.memory_total,
        memory_available=spec.memory_available,
    )


__all__ = ["Cluster", "SimNode", "SimProcess"]
