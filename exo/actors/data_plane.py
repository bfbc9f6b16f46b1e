"""The data plane: a request taken by one node's API, served by an instance whose rank 0
runs on another node, with its tokens streamed straight back over the peer link.

Tokens never enter the replicated log; the API node records only the request's
lifecycle there. A relayed stream ends with an error, never a hang, when the link to the
serving node breaks, when that node is marked down, when the instance is deleted
(which the master does when any of its nodes is lost), or when the serving node says
nothing for `RELAY_IDLE_LIMIT` (it sends `RelayAlive` every `RELAY_KEEPALIVE` while it
works, so a long prefill is not silence, but a server whose task died is).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager, suppress
from typing import Protocol

import trio
from attrs import define

from exo.actors.network import DataLinks, PeerLost
from exo.actors.replica import Replica
from exo.actors.runners import RunnerSupervisor
from exo.actors.wire import (
    DataMessage,
    RelayAlive,
    RelayCancel,
    RelayFailed,
    RelayFinished,
    RelayRequest,
    RelayToken,
)
from exo.api.backend import BackendError, Chunk, GenerationFailed, InvalidRequest, Overloaded
from exo.engine.protocol import Finished, GenerateRequest, TokenOut
from exo.events.ids import InstanceId, NodeId
from exo.events.state import State

log = logging.getLogger("exo.data")

RELAY_KEEPALIVE = 5.0
RELAY_IDLE_LIMIT = 30.0

Relayed = TokenOut | Finished | BackendError | RelayAlive


@define
class _Stream:
    """A request this node relayed and is waiting on."""

    peer: NodeId
    instance_id: InstanceId
    send: trio.MemorySendChannel[Relayed]


class DataPlane:
    def __init__(
        self, node_id: NodeId, replica: Replica, runners: RunnerSupervisor, links: DataLinks
    ) -> None:
        self._node_id = node_id
        self._replica = replica
        self._runners = runners
        self._links = links
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[NodeId, DataMessage]](
            math.inf
        )
        self._streams: dict[str, _Stream] = {}
        # Streams failed here while their server may still be generating: cancel on exit.
        self._abandoned: set[str] = set()
        self._serving: dict[tuple[NodeId, str], trio.CancelScope] = {}
        # Requests sent to a peer's instance since start (the simulator counts them).
        self.relayed = 0

    # -- inbound (called from the link layer) ----------------------------------------

    def deliver(self, peer: NodeId, message: DataMessage) -> None:
        self._inbox_send.send_nowait((peer, message))

    def link_lost(self, peer: NodeId) -> None:
        """The link to `peer` broke: what was in flight on it is lost both ways."""
        self._fail_streams(
            lambda s: s.peer == peer, f"the link to node {peer}, which was serving it, broke"
        )
        for (client, _), scope in list(self._serving.items()):
            if client == peer:
                scope.cancel()

    # -- the actor ---------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_state)
            async for peer, message in self._inbox:
                match message:
                    case RelayRequest():
                        nursery.start_soon(self._serve, peer, message)
                    case RelayCancel(request_id=request_id):
                        scope = self._serving.get((peer, request_id))
                        if scope is not None:
                            scope.cancel()
                    case RelayToken(chunk=chunk):
                        self._route(peer, chunk.request_id, chunk)
                    case RelayAlive(request_id=request_id):
                        self._route(peer, request_id, message)
                    case RelayFinished(finished=finished):
                        self._route(peer, finished.request_id, finished)
                    case RelayFailed():
                        self._route(peer, message.request_id, relayed_error(message))

    async def _watch_state(self) -> None:
        while True:
            await self._replica.wait_changed()
            self._fail_broken(self._replica.state)

    def _fail_broken(self, state: State) -> None:
        self._fail_streams(
            lambda s: s.instance_id not in state.instances,
            "its instance was removed while generating (a node of it was lost)",
        )
        self._fail_streams(
            lambda s: s.peer not in state.nodes, "the node serving it was marked down"
        )

    # -- the API node's side -----------------------------------------------------------

    @asynccontextmanager
    async def relay(
        self, peer: NodeId, instance_id: InstanceId, request: GenerateRequest
    ) -> AsyncIterator[AsyncIterator[Chunk]]:
        """Run `request` on the instance whose rank 0 is on `peer`; leaving early cancels it."""
        request_id = request.request_id
        send, receive = trio.open_memory_channel[Relayed](math.inf)
        self._streams[request_id] = _Stream(peer, instance_id, send)
        self.relayed += 1
        try:
            try:
                await self._links.send_data(peer, RelayRequest(instance_id, request))
            except PeerLost:
                raise GenerationFailed(f"no link to node {peer}, which serves it") from None
            # Closed on the way out: a client that stops reading at Finished leaves the
            # generator one step short of its end, to be finalized by the garbage collector.
            async with aclosing(_chunks(receive, peer)) as chunks:
                yield chunks
        finally:
            left_early = self._streams.pop(request_id, None) is not None
            abandoned = request_id in self._abandoned
            self._abandoned.discard(request_id)
            if left_early or abandoned:
                with trio.CancelScope(shield=True), trio.move_on_after(1), suppress(PeerLost):
                    await self._links.send_data(peer, RelayCancel(request_id))

    def _route(self, peer: NodeId, request_id: str, item: Relayed) -> None:
        stream = self._streams.get(request_id)
        if stream is None or stream.peer != peer:
            return  # a stream its client already left
        with suppress(trio.BrokenResourceError):
            stream.send.send_nowait(item)
        if not isinstance(item, TokenOut | RelayAlive):
            del self._streams[request_id]
            stream.send.close()

    def _fail_streams(self, broken: _StreamTest, why: str) -> None:
        for request_id, stream in list(self._streams.items()):
            if broken(stream):
                log.warning("relayed request %s fails: %s", request_id, why)
                self._abandoned.add(request_id)
                self._route(stream.peer, request_id, GenerationFailed(f"generation stopped: {why}"))

    # -- the serving node's side -----------------------------------------------------

    async def _serve(self, peer: NodeId, message: RelayRequest) -> None:
        request_id = message.request.request_id
        with trio.CancelScope() as scope:
            self._serving[(peer, request_id)] = scope
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_alive, peer, request_id)
                    await self._serve_request(peer, message)
                    nursery.cancel_scope.cancel()
            except PeerLost:
                log.info("relayed request %s: the link to %s broke", request_id, peer)
            except Exception:
                # A bug here must not leave the API node waiting: tell it, then log it.
                log.exception("relayed request %s failed on this node", request_id)
                with suppress(PeerLost), trio.move_on_after(1):
                    failed = RelayFailed(request_id, "internal error on the serving node", False)
                    await self._links.send_data(peer, failed)
            finally:
                del self._serving[(peer, request_id)]

    async def _keep_alive(self, peer: NodeId, request_id: str) -> None:
        while True:
            await trio.sleep(RELAY_KEEPALIVE)
            await self._links.send_data(peer, RelayAlive(request_id))

    async def _serve_request(self, peer: NodeId, message: RelayRequest) -> None:
        request = message.request
        request_id = request.request_id
        handle = self._runners.handles.get(message.instance_id)
        if handle is None or handle.shard.rank != 0 or not handle.ready:
            await self._links.send_data(
                peer,
                RelayFailed(
                    request_id,
                    f"instance {message.instance_id} is not ready on node {self._node_id}",
                    invalid=False,
                ),
            )
            return
        try:
            async with handle.stream(request) as chunks:
                async for chunk in chunks:
                    relayed = (
                        RelayToken(chunk) if isinstance(chunk, TokenOut) else RelayFinished(chunk)
                    )
                    await self._links.send_data(peer, relayed)
        except BackendError as exc:
            invalid = isinstance(exc, InvalidRequest)
            retry_after = exc.retry_after if isinstance(exc, Overloaded) else None
            failed = RelayFailed(request_id, exc.message, invalid, retry_after)
            await self._links.send_data(peer, failed)


def relayed_error(failed: RelayFailed) -> BackendError:
    """The error a serving node reported, as the API node raises it to its client."""
    if failed.retry_after is not None:
        return Overloaded(failed.message, failed.retry_after)
    if failed.invalid:
        return InvalidRequest(failed.message)
    return GenerationFailed(failed.message)


class _StreamTest(Protocol):
    def __call__(self, stream: _Stream, /) -> bool: ...


async def _chunks(
    receive: trio.MemoryReceiveChannel[Relayed], peer: NodeId
) -> AsyncGenerator[Chunk, None]:
    async with receive:
        while True:
            item: Relayed | None = None
            with trio.move_on_after(RELAY_IDLE_LIMIT):
                try:
                    item = await receive.receive()
                except trio.EndOfChannel:
                    break
            if item is None:
                raise GenerationFailed(
                    f"generation stopped: node {peer}, which serves it, sent nothing for "
                    f"{RELAY_IDLE_LIMIT:g} s"
                )
            if isinstance(item, RelayAlive):
                continue
            if isinstance(item, BackendError):
                raise item
            yield item
            if isinstance(item, Finished):
                return
    raise GenerationFailed("the relayed stream ended without a result")
