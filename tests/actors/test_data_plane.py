"""The data plane's API-node side with a fake link: tokens relayed in order, and every
way a relayed stream can break ends it with an error in the right class, never a hang."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, cast

import pytest
import trio

from exo.actors.data_plane import DataPlane
from exo.actors.network import PeerLost
from exo.actors.replica import Replica
from exo.actors.runners import RunnerSupervisor
from exo.actors.wire import (
    PeerMessage,
    RelayCancel,
    RelayFailed,
    RelayFinished,
    RelayRequest,
    RelayToken,
)
from exo.api.backend import GenerationFailed, InvalidRequest, Overloaded
from exo.engine.protocol import ChatMessage, Finished, GenerateRequest, SamplingParams, TokenOut
from exo.events.events import (
    Event,
    IndexedEvent,
    InstanceCreated,
    InstanceDeleted,
    MasterElected,
    NodeDown,
    NodeProfiled,
)
from exo.events.facts import Instance, NodeProfile, Shard
from exo.events.ids import InstanceId, ModelId, NodeId
from exo.events.state import State

HERE, PEER = NodeId("here"), NodeId("peer")
INSTANCE = InstanceId("inst-1")
REQUEST = GenerateRequest("req-1", (ChatMessage("user", "hi"),), SamplingParams())


class FakeLinks:
    def __init__(self) -> None:
        self.sent: list[tuple[NodeId, PeerMessage]] = []
        self.down: set[NodeId] = set()

    async def send_data(self, to: NodeId, message: PeerMessage) -> None:
        if to in self.down:
            raise PeerLost(to)
        self.sent.append((to, message))


def replica() -> Replica:
    profile = NodeProfile("h", "linux", 2, 2**34, 2**33, "cpu", 1, 2)
    events: list[Event] = [
        MasterElected(HERE, 1),
        NodeProfiled(HERE, profile),
        NodeProfiled(PEER, profile),
        InstanceCreated(
            Instance(INSTANCE, ModelId("smollm2-135m"), "pipeline", (Shard(PEER, 0, 0, 30),))
        ),
    ]
    r = Replica(State())
    r.apply_batch([IndexedEvent(i, 1, e) for i, e in enumerate(events, start=1)])
    return r


def append(r: Replica, event: Event) -> None:
    r.apply_batch([IndexedEvent(r.state.last_index + 1, 1, event)])


@asynccontextmanager
async def plane(links: FakeLinks, r: Replica) -> AsyncIterator[DataPlane]:
    runners = cast(RunnerSupervisor, type("NoRunners", (), {"handles": {}})())
    data = DataPlane(HERE, r, runners, links)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(data.run)
        yield data
        nursery.cancel_scope.cancel()


async def collect(chunks: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in chunks]


async def test_tokens_arrive_in_order_then_the_finish() -> None:
    links, r = FakeLinks(), replica()
    async with plane(links, r) as data, data.relay(PEER, INSTANCE, REQUEST) as chunks:
        assert links.sent == [(PEER, RelayRequest(INSTANCE, REQUEST))]
        data.deliver(PEER, RelayToken(TokenOut("req-1", "Hel", 1)))
        data.deliver(NodeId("stranger"), RelayToken(TokenOut("req-1", "XX", 9)))  # not its server
        data.deliver(PEER, RelayToken(TokenOut("req-1", "lo", 2)))
        data.deliver(PEER, RelayFinished(Finished("req-1", "stop", 3, 2)))
        assert await collect(chunks) == [
            TokenOut("req-1", "Hel", 1),
            TokenOut("req-1", "lo", 2),
            Finished("req-1", "stop", 3, 2),
        ]
    assert len(links.sent) == 1  # finished: nothing to cancel


async def test_the_servers_verdict_keeps_its_class() -> None:
    links, r = FakeLinks(), replica()
    async with plane(links, r) as data:
        async with data.relay(PEER, INSTANCE, REQUEST) as chunks:
            data.deliver(PEER, RelayFailed("req-1", "max_tokens must be at least 1", True))
            with pytest.raises(InvalidRequest, match="max_tokens"):
                await collect(chunks)
        async with data.relay(PEER, INSTANCE, REQUEST) as chunks:
            data.deliver(PEER, RelayFailed("req-1", "engine error", False))
            with pytest.raises(GenerationFailed, match="engine error"):
                await collect(chunks)
        async with data.relay(PEER, INSTANCE, REQUEST) as chunks:
            # The serving node's instance is full: its client gets the 429 and the wait.
            data.deliver(PEER, RelayFailed("req-1", "every slot is taken", False, 4.5))
            with pytest.raises(Overloaded, match="every slot") as refused:
                await collect(chunks)
            assert refused.value.headers == {"Retry-After": "5"}


@pytest.mark.parametrize("breakage", ["link", "instance", "node"])
async def test_a_broken_relay_fails_the_stream(breakage: str) -> None:
    links, r = FakeLinks(), replica()
    async with plane(links, r) as data, data.relay(PEER, INSTANCE, REQUEST) as chunks:
        data.deliver(PEER, RelayToken(TokenOut("req-1", "a", 1)))
        await trio.testing.wait_all_tasks_blocked()
        if breakage == "link":
            data.link_lost(PEER)
        elif breakage == "instance":
            append(r, InstanceDeleted(INSTANCE))
        else:
            append(r, NodeDown(PEER))
        with trio.fail_after(1), pytest.raises(GenerationFailed, match="generation stopped"):
            await collect(chunks)
    # The server may still be generating: it is told to stop.
    assert links.sent[-1] == (PEER, RelayCancel("req-1"))


async def test_no_link_fails_at_once_and_leaving_early_cancels() -> None:
    links, r = FakeLinks(), replica()
    async with plane(links, r) as data:
        links.down.add(PEER)
        with pytest.raises(GenerationFailed, match="no link to node peer"):
            async with data.relay(PEER, INSTANCE, REQUEST):
                pass
        links.down.clear()
        async with data.relay(PEER, INSTANCE, REQUEST) as chunks:
            data.deliver(PEER, RelayToken(TokenOut("req-1", "a", 1)))
            async with aclosing(cast(AsyncGenerator[Any, None], chunks)) as stream:
                assert await stream.__anext__() == TokenOut("req-1", "a", 1)
        assert links.sent[-1] == (PEER, RelayCancel("req-1"))


async def test_a_request_for_an_instance_not_served_here_is_refused() -> None:
    links, r = FakeLinks(), replica()
    async with plane(links, r) as data:
        data.deliver(PEER, RelayRequest(INSTANCE, REQUEST))
        await trio.testing.wait_all_tasks_blocked()
    ((to, message),) = links.sent
    assert to == PEER and isinstance(message, RelayFailed) and not message.invalid
    assert "not ready on node here" in message.message


async def test_a_silent_server_fails_the_stream_but_keepalives_hold_it_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server that says nothing for RELAY_IDLE_LIMIT (its task died, the link stayed up)
    ends the stream with an error; one that keeps sending RelayAlive does not."""
    from exo.actors.data_plane import RELAY_IDLE_LIMIT, RELAY_KEEPALIVE
    from exo.actors.wire import RelayAlive

    links, r = FakeLinks(), replica()
    async with plane(links, r) as data:
        async with data.relay(PEER, INSTANCE, REQUEST) as chunks:
            started = trio.current_time()
            with pytest.raises(GenerationFailed, match=r"sent nothing for 30 s"):
                await collect(chunks)
            assert trio.current_time() - started == pytest.approx(RELAY_IDLE_LIMIT)

        async def slow_server() -> None:
            for _ in range(int(3 * RELAY_IDLE_LIMIT / RELAY_KEEPALIVE)):
                await trio.sleep(RELAY_KEEPALIVE)
                data.deliver(PEER, RelayAlive("req-1"))
            data.deliver(PEER, RelayFinished(Finished("req-1", "stop", 3, 0)))

        async with data.relay(PEER, INSTANCE, REQUEST) as chunks, trio.open_nursery() as n:
            n.start_soon(slow_server)
            assert await collect(chunks) == [Finished("req-1", "stop", 3, 0)]


class CrashingHandle:
    """A runner handle whose stream raises something no one expected."""

    ready = True
    shard = Shard(HERE, 0, 0, 30)

    @asynccontextmanager
    async def stream(self, request: GenerateRequest) -> AsyncIterator[AsyncIterator[Any]]:
        raise RuntimeError("a bug in the serving path")
        yield  # pragma: no cover


async def test_a_bug_on_the_serving_side_is_reported_to_the_api_node() -> None:
    links, r = FakeLinks(), replica()
    runners = cast(RunnerSupervisor, type("One", (), {"handles": {INSTANCE: CrashingHandle()}})())
    data = DataPlane(HERE, r, runners, links)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(data.run)
        data.deliver(PEER, RelayRequest(INSTANCE, REQUEST))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    ((to, message),) = links.sent
    assert to == PEER and isinstance(message, RelayFailed) and not message.invalid
    assert message.message == "internal error on the serving node"
