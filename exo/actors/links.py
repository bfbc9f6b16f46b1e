"""Peer links between real nodes: WebSockets (trio-websocket) carrying typed frames.

Each link starts with the handshake of `link_auth.py`: a mutual proof of the cluster key
that also agrees the link's keys. A peer with another namespace or key is dropped before
it can send a single command or event, and the log says why. Every frame after it is
sealed (`exo/link_cipher.py`) and sent as a binary WebSocket message; one that does not
open (damaged, forged, replayed, reordered) closes the link, which the dialer redials.

`LinkNetwork` is the `PeerNetwork` of a real node: sends go to a bounded queue per link
(dropped when full or when there is no link: the control protocol retries), frames
arriving on any link go to the control actor. Configured peers (`--peers`) and peers met
before (remembered in HOME/peers.json) are dialled, and redialled with backoff.

Every socket, nonce and pause comes from the `Environment`: the WebSocket protocol runs
over whatever streams it opens, so the simulator runs this whole layer on its network.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import trio
from attrs import define, frozen
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
    wrap_server_stream,
)

from exo.actors.link_auth import HANDSHAKE_TIMEOUT, AuthError, LinkAuth, Session, cluster_secret
from exo.actors.network import PeerLost
from exo.actors.wire import PeerMessage, Ping, Pong
from exo.environment import Environment, listener_port, remote_host
from exo.events.codec import CodecError, decode, encode
from exo.events.ids import NodeId
from exo.link_cipher import SEAL_OVERHEAD, FrameError, LinkCipher

log = logging.getLogger("exo.links")

MAX_FRAME_BYTES = 16 * 1024 * 1024
# What a WebSocket message may hold: a frame and its seal, or a handshake message.
WIRE_FRAME_BYTES = MAX_FRAME_BYTES + SEAL_OVERHEAD
SEND_QUEUE = 1024

# How long a closing link waits for the peer's close frame.
CLOSE_TIMEOUT = 1.0
# A link that has heard nothing for KEEPALIVE_INTERVAL sends a `Ping` (answered by the
# peer's link layer); one that has heard nothing for LINK_SILENT_LIMIT is dead (a
# half-open TCP connection: the peer's host lost power, a NAT forgot it) and is closed,
# so that the dialer redials. Without it such a link stayed "live" until the kernel gave
# up retransmitting (about 15 minutes on Linux). Not WebSocket pings: their pongs are
# written by the reader task itself, which then stops reading while the send window is
# full, and two such readers deadlock (the simulator found that too).
KEEPALIVE_INTERVAL = 5.0
LINK_SILENT_LIMIT = 15.0
KEEPALIVE_NONCE = -1
REDIAL_INITIAL = 0.5
REDIAL_MAX = 10.0
PEERS_FILE = "peers.json"

Deliver = Callable[[NodeId, PeerMessage], None]


class LinkNetwork:
    def __init__(
        self,
        env: Environment,
        node_id: NodeId,
        home: Path,
        namespace: str,
        cluster_key: str | None,
        peer_port: int,
        peers: tuple[str, ...],
    ) -> None:
        self._env = env
        self.node_id = node_id
        self._home = home
        self._auth = LinkAuth(namespace, node_id, cluster_secret(namespace, cluster_key), peer_port)
        self._peer_port = peer_port
        self._configured = peers
        self._links: dict[NodeId, trio.MemorySendChannel[bytes]] = {}
        self._dialers: dict[NodeId, NodeId] = {}
        # Set when the link with a peer ends (a replaced link's too).
        self._ended: dict[NodeId, trio.Event] = {}
        self._known: set[NodeId] = set()
        # Addresses linked with before, read once: `expecting_peers` runs every tick.
        self._remembered: set[str] = _read_remembered(home / PEERS_FILE)
        self._deliver: Deliver | None = None
        self._nursery: trio.Nursery | None = None
        self._dialing: set[str] = set()
        # Set while multicast discovery runs: peers may appear without being configured.
        self.discovering = False
        # Where link-measurement answers go (the probe actor).
        self.on_pong: Callable[[NodeId, Pong], None] | None = None
        # Told when a live link to a peer is gone (the data plane fails what used it).
        self.on_link_lost: Callable[[NodeId], None] | None = None
        # The IP address each linked peer is reached at (its side of the TCP connection).
        self._addresses: dict[NodeId, str] = {}
        self.stats = LinkStats()

    # -- PeerNetwork ---------------------------------------------------------------

    def send(self, to: NodeId, message: PeerMessage) -> None:
        channel = self._links.get(to)
        if channel is not None:
            _offer(channel, message)

    async def send_data(self, to: NodeId, message: PeerMessage) -> None:
        """Send in order, waiting while the link's queue is full (data-plane frames must
        not be dropped); raises `PeerLost` when there is no live link."""
        channel = self._links.get(to)
        if channel is None:
            raise PeerLost(to)
        try:
            await channel.send(encode(message, PeerMessage))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise PeerLost(to) from None

    def address_of(self, peer: NodeId) -> str:
        """The IP address the live link to `peer` reaches it at ("" without a link)."""
        return self._addresses.get(peer, "")

    def peers(self) -> list[NodeId]:
        return sorted(self._known)

    def linked(self) -> list[NodeId]:
        """Peers with a live link now."""
        return sorted(self._links)

    def expecting_peers(self) -> bool:
        return self.discovering or bool(self._known) or bool(self._dial_list())

    def connect(self, node_id: NodeId, deliver: Deliver) -> LinkNetwork:
        """The `Connect` hook of `run_node`: remember where inbound frames go."""
        assert node_id == self.node_id
        self._deliver = deliver
        return self

    # -- running -------------------------------------------------------------------

    async def run(
        self, host: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listener = await self._env.open_tcp_listener(host, self._peer_port)
        async with listener, trio.open_nursery() as nursery:
            port = listener_port(listener)
            log.info("peer links listening on %s:%d", host, port)
            self._nursery = nursery
            for address in self._dial_list():
                self.dial(address)
            task_status.started(port)
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._accept, stream)

    def _dial_list(self) -> list[str]:
        return sorted(set(self._configured) | self._remembered)

    def _remember(self, address: str) -> None:
        """Add a peer address to HOME/peers.json (written only when it is new)."""
        if address in self._remembered:
            return
        self._remembered.add(address)
        path = self._home / PEERS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self._remembered)))
        tmp.replace(path)

    def dial(self, address: str) -> None:
        """Keep a link to HOST:PORT (configured, remembered or discovered) from now on."""
        if address in self._dialing or self._nursery is None:
            return
        self._dialing.add(address)
        self._nursery.start_soon(self._keep_dialing, address)

    async def _keep_dialing(self, address: str) -> None:
        bracketed, _, port = address.rpartition(":")
        host = bracketed.strip("[]")
        backoff = REDIAL_INITIAL
        while True:
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    stream = await self._env.open_tcp_stream(host, int(port))
            except (OSError, trio.TooSlowError) as exc:
                log.debug("peer %s unreachable: %s", address, exc)
            else:
                outcome = await self._dial_once(address, host, stream)
                if isinstance(outcome, _Duplicate):
                    # The pair already has the link the other side dialled: dial again
                    # only once that one is gone (not every half second while it lives).
                    await outcome.kept_link_ended.wait()
                    backoff = REDIAL_INITIAL
                elif outcome == "linked":
                    backoff = REDIAL_INITIAL
                elif outcome == "refused":
                    backoff = REDIAL_MAX
            await self._env.sleep(backoff)
            backoff = min(backoff * 2, REDIAL_MAX)

    async def _dial_once(
        self, address: str, host: str, stream: trio.abc.Stream
    ) -> str | _Duplicate:
        """One connection to a peer, served until it breaks: "linked" once it was a link,
        "refused" when either side refused the other's key, a `_Duplicate` when the pair
        keeps the link the other side dialled, else "failed"."""
        async with trio.open_nursery() as nursery:
            ws: WebSocketConnection | None = None
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    # Typed for sockets, it only reads and writes the stream.
                    wrap: Any = wrap_client_stream
                    link: WebSocketConnection = await wrap(
                        nursery, stream, host, "/exo", max_message_size=WIRE_FRAME_BYTES
                    )
                    ws = link
                    session = await self._auth.as_dialer(link, self._env.token_hex)
                self._remember(address)
                kept = await self._serve_link(session, link, self.node_id, remote_host(stream))
                return "linked" if kept is None else _Duplicate(kept)
            except AuthError as exc:
                log.error("peer %s refused: %s", address, exc)
                self.stats.refused += 1
                return "refused"
            except _BROKEN as exc:
                log.debug("peer %s: no link: %s", address, exc)
                return "failed"
            finally:
                await _close(ws, stream)
                nursery.cancel_scope.cancel()

    async def _accept(self, stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            ws: WebSocketConnection | None = None
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    request = await wrap_server_stream(
                        nursery, stream, max_message_size=WIRE_FRAME_BYTES
                    )
                    ws = link = await request.accept()
                try:
                    session = await self._auth.as_listener(link, self._env.token_hex)
                except AuthError as exc:
                    log.error("peer at %s refused: %s", remote_host(stream) or "?", exc)
                    self.stats.refused += 1
                    await link.aclose(code=4001, reason=str(exc)[:100])
                    return
                await self._serve_link(session, link, session.peer, remote_host(stream))
            except _BROKEN:
                return
            finally:
                await _close(ws, stream)
                nursery.cancel_scope.cancel()

    # -- a live link ---------------------------------------------------------------

    async def _serve_link(
        self, session: Session, ws: WebSocketConnection, dialed_by: NodeId, address: str
    ) -> trio.Event | None:
        """Frames both ways until the link breaks.

        One link per pair: when both nodes dial each other, the link the lower id dialled
        wins on both sides; a redial (the same dialer, the old link lost) replaces the old,
        and whatever used the old one is told it was lost. A link closed as a duplicate
        returns the event set when the kept one ends.
        """
        peer, cipher = session.peer, session.cipher
        preferred = min(self.node_id, peer)
        current = self._links.get(peer)
        if current is not None and self._dialers.get(peer) == preferred != dialed_by:
            self.stats.duplicates += 1
            await ws.aclose(code=1000, reason="duplicate link")
            return self._ended[peer]
        send, receive = trio.open_memory_channel[bytes](SEND_QUEUE)
        if current is not None:
            self._retire(peer, current)
        self._links[peer] = send
        self._dialers[peer] = dialed_by
        ended = self._ended[peer] = trio.Event()
        self._known.add(peer)
        self._addresses[peer] = address
        self.stats.links += 1
        log.info("linked with %s", peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, ws, cipher, receive, nursery.cancel_scope)
                heard = _Heard(self._env.now())
                nursery.start_soon(self._keep_alive, peer, send, heard, nursery.cancel_scope)
                await self._read(peer, ws, cipher, heard)
                nursery.cancel_scope.cancel()
        finally:
            if self._links.get(peer) is send:
                del self._links[peer]
                self._addresses.pop(peer, None)
                if self.on_link_lost is not None:
                    self.on_link_lost(peer)
            ended.set()
            send.close()
        return None

    async def _keep_alive(
        self,
        peer: NodeId,
        send: trio.MemorySendChannel[bytes],
        heard: _Heard,
        scope: trio.CancelScope,
    ) -> None:
        while True:
            await self._env.sleep(KEEPALIVE_INTERVAL)
            silent = self._env.now() - heard.at
            if silent >= LINK_SILENT_LIMIT:
                log.warning("link with %s: silent for %.0f s; closing it", peer, silent)
                self.stats.silent += 1
                scope.cancel()
                return
            if silent >= KEEPALIVE_INTERVAL:
                _offer(send, Ping(KEEPALIVE_NONCE))

    def _retire(self, peer: NodeId, replaced: trio.MemorySendChannel[bytes]) -> None:
        """Close a link a redial replaced. Frames still queued on it, or on their way
        over it, are lost: what counted on them (relayed streams, file transfers) fails
        now rather than go on with a gap (the simulator found a relayed reply missing a
        token)."""
        self.stats.replaced += 1
        replaced.close()
        if self.on_link_lost is not None:
            self.on_link_lost(peer)

    async def _read(
        self, peer: NodeId, ws: WebSocketConnection, cipher: LinkCipher, heard: _Heard
    ) -> None:
        try:
            while True:
                sealed = await ws.get_message()
                heard.at = self._env.now()
                try:
                    frame = _open(cipher, sealed)
                except FrameError as exc:
                    log.warning("link with %s: %s; closing it", peer, exc)
                    self.stats.unsealed += 1
                    return
                try:
                    message = decode(frame, PeerMessage)
                except CodecError as exc:
                    log.warning("undecodable frame from %s: %s", peer, exc)
                    continue
                if isinstance(message, Ping):  # answered here: it times the link itself
                    self.send(peer, Pong(message.nonce, len(message.padding)))
                elif isinstance(message, Pong):
                    if message.nonce != KEEPALIVE_NONCE and self.on_pong is not None:
                        self.on_pong(peer, message)
                elif self._deliver is not None:
                    self._deliver(peer, message)
        except ConnectionClosed:
            log.info("link with %s closed", peer)

    async def _write(
        self,
        ws: WebSocketConnection,
        cipher: LinkCipher,
        receive: trio.MemoryReceiveChannel[bytes],
        scope: trio.CancelScope,
    ) -> None:
        try:
            async for frame in receive:
                await ws.send_message(cipher.seal(frame))
        except ConnectionClosed:
            pass
        scope.cancel()


# What a connection that breaks, stalls or talks nonsense during the handshake raises.
_BROKEN = (
    ConnectionClosed,
    HandshakeError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    CodecError,
)


@define
class _Heard:
    """When a link last received a frame."""

    at: float


@frozen
class _Duplicate:
    """A dial closed because the pair keeps the link the other side dialled."""

    kept_link_ended: trio.Event


@define
class LinkStats:
    """Counts since start, for the simulator's report and tests."""

    links: int = 0  # links that passed the handshake
    duplicates: int = 0  # links closed as the second of a pair
    replaced: int = 0  # links a newer one replaced (the pair's preferred, or a redial)
    refused: int = 0  # handshakes failed on the cluster key or namespace
    silent: int = 0  # links closed because their peer stopped answering pings
    unsealed: int = 0  # links closed on a frame that failed its integrity check


def _offer(channel: trio.MemorySendChannel[bytes], message: PeerMessage) -> None:
    """Queue a frame on a link without waiting: dropped when the queue is full or the link
    is gone (the control protocol and the keepalive both retry)."""
    with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        channel.send_nowait(encode(message, PeerMessage))


def _open(cipher: LinkCipher, sealed: str | bytes) -> bytes:
    if isinstance(sealed, str):
        raise FrameError("a text message after the handshake: every frame is sealed")
    return cipher.open(sealed)


async def _close(ws: WebSocketConnection | None, stream: trio.abc.Stream) -> None:
    """Close a link's WebSocket (waiting a moment for the peer's close frame) and its stream."""
    with trio.CancelScope(shield=True):
        if ws is not None:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose()
        await trio.aclose_forcefully(stream)


def _read_remembered(path: Path) -> set[str]:
    if not path.exists():
        return set()
    try:
        return {str(a) for a in json.loads(path.read_text())}
    except (ValueError, TypeError):
        log.warning("%s is not a list of addresses; ignoring it", path)
        return set()
