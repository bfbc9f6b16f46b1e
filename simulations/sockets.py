"""Simulated TCP: listeners and byte streams between simulated hosts, on the one clock.

A seed whose transport is "links" gives each node an address (10.0.x.y) and these
sockets instead of the message queue of `network.py`: the node's real link layer
(trio-websocket, the key handshake, duplicate-link resolution, redial), its data plane
and the fake runners' rings all run over them.

What a stream does, as TCP does it:
- bytes arrive in order, each `send_all` after the link's latency plus a seeded jitter
  (never before the bytes sent earlier);
- a partition in either direction stalls both directions (data needs the other side's
  acknowledgements); the bytes arrive after it heals, so a link can outlive a short
  partition, as a real one does;
- a sender blocks once `WINDOW` bytes wait unread (the receive window);
- a crashed node's streams are reset (its kernel answers with RST), and it refuses
  connections until its new incarnation listens again;
- a connection to an address nobody listens on is refused after a round trip; across a
  partition it waits (SYNs lost) until the partition heals or the caller gives up;
- with the seed's reset rate, a delivery breaks the connection: half the time both
  ends see it reset (a middlebox's RST); else only one end does, and the other's
  connection goes half-open (a NAT that forgot it, a peer host that lost power): its
  reads wait for ever and what it sends vanishes, until its own keepalive gives up.

Multicast (discovery's beacons) reaches every member of the group, the sender included
(loopback is on), each copy lost with the seed's drop rate, after its own delay, and
dropped when a partition blocks the pair as it arrives.

Every delivery is recorded in the trace (time, ends, bytes), so a seed's bytes on the
wire are part of its hash.
"""

from __future__ import annotations

import errno
import heapq
import random
import socket
from collections import deque
from collections.abc import Callable

import trio
from attrs import define, field

from simulations.network import LinkModel, Record

WINDOW = 256 * 1024
FIRST_EPHEMERAL_PORT = 40000

# Whether bytes may pass from one address to another now.
Passes = Callable[[str, str], bool]


@define(eq=False)
class _Pipe:
    """One direction of a connection: bytes in flight and buffered at the receiver."""

    source: str
    target: str
    chunks: deque[tuple[float, bytes]] = field(factory=deque)
    buffered: int = 0
    last_at: float = 0.0
    eof: bool = False
    # Reset as its sender sees it (sends raise), as its receiver does (reads raise), and
    # whether bytes still pass at all (a half-open connection's do not).
    broken_for_sender: bool = False
    broken_for_receiver: bool = False
    lost: bool = False
    # Set on anything its ends may wait for: bytes sent or read, EOF, a reset, a heal.
    wake: trio.Event = field(factory=trio.Event)

    def notify(self) -> None:
        self.wake.set()
        self.wake = trio.Event()

    def discard(self) -> None:
        """Drop the bytes in flight (a reset, a half-open connection, a close)."""
        self.chunks.clear()
        self.buffered = 0
        self.notify()

    async def wait(self, until: float | None = None) -> None:
        event = self.wake
        with trio.move_on_at(until if until is not None else float("inf")):
            await event.wait()


class SimSockets:
    """Every simulated host's sockets, on one seeded network."""

    def __init__(self, rng: random.Random, link: LinkModel, passes: Passes, record: Record) -> None:
        self._rng = rng
        self.link = link
        self.reset_rate = 0.0
        self._passes = passes
        self._record = record
        self._listeners: dict[tuple[str, int], SimListener] = {}
        self._streams: list[SimStream] = []
        self._next_port: dict[str, int] = {}
        self._groups: dict[tuple[str, int], list[SimMulticast]] = {}
        self._datagrams = 0
        self._changed = trio.Event()
        self.connections = 0
        self.resets = 0

    # -- the network changed: a partition started or healed, a node crashed ----------

    def changed(self) -> None:
        """Wake everything that waits on the network (called on every fault and heal)."""
        self._changed.set()
        self._changed = trio.Event()
        for stream in self._streams:
            stream.incoming.notify()
            stream.outgoing.notify()

    def passes(self, a: str, b: str) -> bool:
        """Bytes flow between a and b: neither direction is blocked (TCP needs both)."""
        return self._passes(a, b) and self._passes(b, a)

    # -- hosts ---------------------------------------------------------------------

    def host(self, address: str) -> SimHostSockets:
        """The sockets of one node incarnation at `address`."""
        return SimHostSockets(self, address)

    def crash(self, address: str) -> None:
        """The node at `address` died: its listeners close, its streams are reset."""
        for key in [k for k in self._listeners if k[0] == address]:
            self._listeners.pop(key).close()
        for members in self._groups.values():
            for member in [m for m in members if m.address == address]:
                member.close()
        for stream in list(self._streams):
            if address in (stream.local_host, stream.remote_host):
                self._reset(stream)
        self.changed()

    # -- streams -------------------------------------------------------------------

    def _delay(self) -> float:
        link = self.link
        return link.latency + (self._rng.expovariate(1 / link.jitter) if link.jitter else 0.0)

    async def _connect(self, source: str, host: str, port: int) -> SimStream:
        # The SYN waits out a partition (its retransmissions are lost until it heals).
        while not self.passes(source, host):
            await self._changed.wait()
        await trio.sleep(2 * self._delay())
        listener = self._listeners.get((host, port))
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused: {host}:{port}")
        self.connections += 1
        out, back = _Pipe(source, host), _Pipe(host, source)
        client = SimStream(self, out, back, source, host)
        server = SimStream(self, back, out, host, source)
        self._streams += [client, server]
        listener.offer(server)
        return client

    def _send(self, pipe: _Pipe, data: bytes) -> None:
        at = max(pipe.last_at, trio.current_time() + self._delay())
        pipe.last_at = at
        pipe.chunks.append((at, data))
        pipe.buffered += len(data)
        pipe.notify()

    async def _receive(self, stream: SimStream, pipe: _Pipe, max_bytes: int) -> bytes:
        while True:
            if pipe.broken_for_receiver:
                raise trio.BrokenResourceError("connection reset")
            if pipe.chunks and not pipe.lost:
                at, data = pipe.chunks[0]
                if self.passes(pipe.source, pipe.target):
                    now = trio.current_time()
                    if at <= now:
                        if self.reset_rate and self._rng.random() < self.reset_rate:
                            self._break(stream, now)
                            continue
                        return self._take(pipe, data, max_bytes, now)
                    await pipe.wait(at)
                    continue
            elif pipe.eof and not pipe.lost:
                return b""
            await pipe.wait()

    def _take(self, pipe: _Pipe, data: bytes, max_bytes: int, now: float) -> bytes:
        if len(data) > max_bytes:
            pipe.chunks[0] = (pipe.chunks[0][0], data[max_bytes:])
            data = data[:max_bytes]
        else:
            pipe.chunks.popleft()
        pipe.buffered -= len(data)
        self._record(f"{now:.6f} {pipe.source}>{pipe.target} tcp {len(data)}")
        pipe.notify()
        return data

    def _break(self, stream: SimStream, now: float) -> None:
        """A seeded network fault on `stream`'s connection: a reset both ends see, or a
        half-open connection that only one end (drawn) learns of."""
        self.resets += 1
        if self._rng.random() < 0.5:
            self._record(f"{now:.6f} {stream.remote_host}>{stream.local_host} tcp reset")
            self._reset(stream)
            return
        learner = stream if self._rng.random() < 0.5 else self._other_end(stream)
        self._record(f"{now:.6f} {learner.local_host} tcp half-open")
        self.half_open(learner)

    def half_open(self, learner: SimStream) -> None:
        """Break the connection for `learner` only: its reads and writes raise, while the
        other end's reads wait for ever and what it sends vanishes."""
        learner.incoming.broken_for_receiver = True
        learner.outgoing.broken_for_sender = True
        for pipe in (learner.incoming, learner.outgoing):
            pipe.lost = True
            pipe.discard()

    def _other_end(self, stream: SimStream) -> SimStream:
        for end in self._streams:
            if end.outgoing is stream.incoming:
                return end
        return stream  # the other end is closed already: it learns nothing more

    def _reset(self, stream: SimStream) -> None:
        for pipe in (stream.outgoing, stream.incoming):
            pipe.broken_for_sender = pipe.broken_for_receiver = True
            pipe.discard()
        for end in [s for s in self._streams if s.outgoing in (stream.outgoing, stream.incoming)]:
            self._streams.remove(end)

    def _forget(self, stream: SimStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def _multicast(self, sender: str, group: tuple[str, int], data: bytes) -> None:
        now = trio.current_time()
        for member in self._groups.get(group, []):
            if self.link.drop and self._rng.random() < self.link.drop:
                continue
            self._datagrams += 1
            member.arrive(now + self._delay(), self._datagrams, sender, data)

    def _join(self, member: SimMulticast) -> None:
        self._groups.setdefault(member.group, []).append(member)

    def _leave(self, member: SimMulticast) -> None:
        members = self._groups.get(member.group, [])
        if member in members:
            members.remove(member)

    def _bind(self, host: str, port: int) -> SimListener:
        if port == 0:
            port = self._next_port.get(host, FIRST_EPHEMERAL_PORT)
            while (host, port) in self._listeners:
                port += 1
            self._next_port[host] = port + 1
        if (host, port) in self._listeners:
            raise OSError(errno.EADDRINUSE, f"address in use: {host}:{port}")
        listener = SimListener(self, host, port)
        self._listeners[(host, port)] = listener
        return listener

    def _unbind(self, listener: SimListener) -> None:
        if self._listeners.get((listener.host, listener.port)) is listener:
            del self._listeners[(listener.host, listener.port)]


class SimHostSockets:
    """One node incarnation's view: listens on its own address, dials from it. After a
    crash it can do nothing more (a new incarnation gets a new view)."""

    def __init__(self, sockets: SimSockets, address: str) -> None:
        self._sockets = sockets
        self.address = address
        self.dead = False

    async def open_tcp_stream(self, host: str, port: int) -> SimStream:
        if self.dead:
            raise OSError(errno.ENETDOWN, "this node crashed")
        return await self._sockets._connect(self.address, host, port)

    async def open_tcp_listener(self, host: str, port: int) -> SimListener:
        if self.dead:
            raise OSError(errno.ENETDOWN, "this node crashed")
        if host not in ("0.0.0.0", "", self.address):
            raise OSError(errno.EADDRNOTAVAIL, f"{host} is not an address of this host")
        await trio.lowlevel.checkpoint()
        return self._sockets._bind(self.address, port)

    async def open_multicast(self, group: str, port: int) -> SimMulticast:
        if self.dead:
            raise OSError(errno.ENETDOWN, "this node crashed")
        await trio.lowlevel.checkpoint()
        return SimMulticast(self._sockets, self.address, (group, port))


class SimMulticast:
    """One host's membership of a multicast group (the `Multicast` of the environment)."""

    def __init__(self, sockets: SimSockets, address: str, group: tuple[str, int]) -> None:
        self._sockets = sockets
        self.address = address
        self.group = group
        # (deliver_at, seq, sender, data): datagrams reorder, as UDP's may.
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._wake = trio.Event()
        self._closed = False
        sockets._join(self)

    def arrive(self, at: float, seq: int, sender: str, data: bytes) -> None:
        heapq.heappush(self._queue, (at, seq, sender, data))
        self._wake.set()
        self._wake = trio.Event()

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "multicast socket closed")
        self._sockets._multicast(self.address, self.group, bytes(data))
        await trio.lowlevel.checkpoint()

    async def receive(self, max_bytes: int) -> tuple[bytes, str]:
        while not self._closed:
            if self._queue and self._queue[0][0] <= trio.current_time():
                at, _, sender, data = heapq.heappop(self._queue)
                if not self._sockets.passes(sender, self.address):
                    continue  # lost to a partition on the way
                self._sockets._record(f"{at:.6f} {sender}>{self.address} udp {len(data)}")
                await trio.lowlevel.checkpoint()
                return data[:max_bytes], sender
            event = self._wake
            with trio.move_on_at(self._queue[0][0] if self._queue else float("inf")):
                await event.wait()
        raise OSError(errno.EBADF, "multicast socket closed")

    def close(self) -> None:
        self._closed = True
        self._sockets._leave(self)
        self._wake.set()


class SocketName:
    """What a server (hypercorn) asks of a connection's socket: its family and the
    addresses of both ends (simulated ports are not tracked per connection)."""

    family = socket.AF_INET

    def __init__(self, local: str, remote: str) -> None:
        self._local = local
        self._remote = remote

    def getsockname(self) -> tuple[str, int]:
        return (self._local, 0)

    def getpeername(self) -> tuple[str, int]:
        return (self._remote, 0)


class SimStream(trio.abc.Stream):
    """One end of a simulated TCP connection."""

    def __init__(
        self, sockets: SimSockets, outgoing: _Pipe, incoming: _Pipe, local: str, remote: str
    ) -> None:
        self._sockets = sockets
        self.outgoing = outgoing
        self.incoming = incoming
        self.local_host = local
        self.remote_host = remote
        self.socket = SocketName(local, remote)
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        pipe = self.outgoing
        while pipe.buffered >= WINDOW and not pipe.broken_for_sender:
            await pipe.wait()
        if pipe.broken_for_sender:
            raise trio.BrokenResourceError("connection reset")
        if pipe.eof:
            raise trio.ClosedResourceError("stream closed for sending")
        if data and not pipe.lost:
            self._sockets._send(pipe, bytes(data))
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        while self.outgoing.buffered >= WINDOW and not self.outgoing.broken_for_sender:
            await self.outgoing.wait()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        data = await self._sockets._receive(self, self.incoming, max_bytes or 65536)
        await trio.lowlevel.checkpoint()
        return data

    def reset(self) -> None:
        """Abort the connection (a dead process's kernel sends RST): both ends break."""
        self._closed = True
        self._sockets._reset(self)

    async def send_eof(self) -> None:
        self.outgoing.eof = True
        self.outgoing.notify()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """FIN after the bytes already sent; what the peer sends from now on meets an RST."""
        if not self._closed:
            self._closed = True
            self.outgoing.eof = True
            self.outgoing.notify()
            # The peer's later bytes meet an RST, if they still reach this host at all.
            self.incoming.broken_for_sender = not self.incoming.lost
            self.incoming.discard()
            self._sockets._forget(self)
        await trio.lowlevel.checkpoint()


class SimListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, sockets: SimSockets, host: str, port: int) -> None:
        self._sockets = sockets
        self.host = host
        self.port = port
        self._send, self._receive = trio.open_memory_channel[SimStream](128)

    def offer(self, stream: SimStream) -> None:
        try:
            self._send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._sockets._reset(stream)  # a full backlog, or closed: refused

    def close(self) -> None:
        self._send.close()
        self._sockets._unbind(self)

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("listener closed") from None

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
