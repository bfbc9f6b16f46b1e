"""The simulated network: one seeded queue of deliveries keyed by (deliver_at, seq).

Every send draws its fate from the simulation's one random generator, in the order the
(deterministically scheduled) actors send: lost, delivered once or twice, after a latency
with jitter (so messages reorder). Partitions block directed pairs, so a one-way partition
is one blocked direction. A message to a node that is down, or across a partition when it
arrives, is dropped.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

import trio
from attrs import frozen

from exo.actors.wire import PeerMessage
from exo.events.ids import NodeId

Deliver = Callable[[NodeId, PeerMessage], None]
Record = Callable[[str], None]


@frozen
class LinkModel:
    """How the network behaves between any two nodes."""

    latency: float = 0.001  # seconds, before jitter
    jitter: float = 0.002  # mean of the exponential added to each delivery
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability it is delivered twice


# (deliver_at, seq, sender, receiver, message): seq is unique, so ties never compare further.
_Delivery = tuple[float, int, NodeId, NodeId, PeerMessage]


class SimNetwork:
    def __init__(self, rng: random.Random, link: LinkModel, record: Record) -> None:
        self._rng = rng
        self.link = link
        self._record = record
        self._queue: list[_Delivery] = []
        self._seq = 0
        self._members: list[NodeId] = []
        self._endpoints: dict[NodeId, Deliver] = {}
        # Directed pairs blocked, with how many overlapping faults block each.
        self._blocked: dict[tuple[NodeId, NodeId], int] = {}
        self._wake = trio.Event()
        # Told when a partition starts or heals (the simulated sockets wake their waiters).
        self.on_change: list[Callable[[], None]] = []
        self.sent = 0
        self.delivered = 0
        self.dropped = 0

    def add_member(self, node_id: NodeId) -> None:
        """A node that exists (configured as a peer), whether up or down."""
        if node_id not in self._members:
            self._members.append(node_id)
            self._members.sort()

    def connect(self, node_id: NodeId, deliver: Deliver) -> None:
        self.add_member(node_id)
        self._endpoints[node_id] = deliver

    def disconnect(self, node_id: NodeId) -> None:
        self._endpoints.pop(node_id, None)

    def is_connected(self, node_id: NodeId) -> bool:
        return node_id in self._endpoints

    def peers_of(self, node_id: NodeId) -> list[NodeId]:
        return [m for m in self._members if m != node_id]

    def block(self, sender: NodeId, receiver: NodeId) -> None:
        self._blocked[(sender, receiver)] = self._blocked.get((sender, receiver), 0) + 1
        self._changed()

    def unblock(self, sender: NodeId, receiver: NodeId) -> None:
        count = self._blocked.get((sender, receiver), 0) - 1
        if count > 0:
            self._blocked[(sender, receiver)] = count
        else:
            self._blocked.pop((sender, receiver), None)
        self._changed()

    def blocked(self, sender: NodeId, receiver: NodeId) -> bool:
        return (sender, receiver) in self._blocked

    def _changed(self) -> None:
        for hook in self.on_change:
            hook()

    def linked(self, a: NodeId, b: NodeId) -> bool:
        """Both are up and messages pass both ways between them (loss aside)."""
        return (
            self.is_connected(a)
            and self.is_connected(b)
            and (a, b) not in self._blocked
            and (b, a) not in self._blocked
        )

    def heal(self) -> None:
        self._blocked.clear()
        self._changed()

    def send(self, sender: NodeId, receiver: NodeId, message: PeerMessage) -> None:
        self.sent += 1
        link = self.link
        if link.drop and self._rng.random() < link.drop:
            self.dropped += 1
            return
        copies = 2 if link.duplicate and self._rng.random() < link.duplicate else 1
        now = trio.current_time()
        for _ in range(copies):
            delay = link.latency + (self._rng.expovariate(1 / link.jitter) if link.jitter else 0)
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, sender, receiver, message))
        self._wake.set()

    async def run(self) -> None:
        """Deliver in (deliver_at, seq) order, each at its time on the simulated clock."""
        while True:
            if not self._queue:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            deliver_at = self._queue[0][0]
            now = trio.current_time()
            if deliver_at > now:
                with trio.move_on_after(deliver_at - now):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            _, _, sender, receiver, message = heapq.heappop(self._queue)
            deliver = self._endpoints.get(receiver)
            if deliver is None or (sender, receiver) in self._blocked:
                self.dropped += 1
                continue
            self.delivered += 1
            self._record(f"{deliver_at:.6f} {sender}>{receiver} {type(message).__name__}")
            deliver(sender, message)
