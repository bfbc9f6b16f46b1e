"""The API over simulated TCP: the real app served by `serve` through a simulated
listener, asked by httpcore through `SimNetworkBackend`, in every dialect; a connection
the network leaves half-open fails the request after the client's timeout, while a
server that is only slow is waited for."""

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import cast

import httpcore
import pytest
import trio
import trio.testing

from exo.api.app import create_app, serve
from exo.models.cards import BUNDLED_MODEL
from simulations.http import (
    API_PORT,
    CLIENT_ADDRESS,
    DIALECTS,
    HALF_OPEN_TIMEOUT,
    ChatFailed,
    Dialect,
    SimNetworkBackend,
    chat,
)
from simulations.network import LinkModel
from simulations.sockets import SimSockets, SimStream
from tests.api.fakes import FakeBackend, Pause, fake_card, tokens

SERVER = "10.0.0.1"
KEY = "sim-key"
REPLY = ("alpha ", "beta ")


def backend(pause: float = 0.0) -> FakeBackend:
    script = [Pause(pause), *tokens(*REPLY)] if pause else tokens(*REPLY)
    return FakeBackend(script, cards=[fake_card(BUNDLED_MODEL)])


@asynccontextmanager
async def served(fake: FakeBackend) -> AsyncIterator[httpcore.AsyncConnectionPool]:
    """The real app over `fake`, served with `KEY` at SERVER on a fresh simulated network,
    and a client's connection pool to it; the server stops on the way out."""
    net = network()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            partial(
                serve,
                create_app(fake, api_keys=[KEY]),
                "0.0.0.0",
                API_PORT,
                open_listener=net.host(SERVER).open_tcp_listener,
            )
        )
        assert bound == ("0.0.0.0", API_PORT)
        async with client(net) as pool:
            yield pool
        nursery.cancel_scope.cancel()


def client(net: SimSockets) -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(network_backend=SimNetworkBackend(net.host(CLIENT_ADDRESS)))


def network() -> SimSockets:
    return SimSockets(random.Random(0), LinkModel(latency=0.01), lambda a, b: True, [].append)


def run(test: object) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_each_dialect_is_answered_through_the_real_app_over_simulated_tcp(
    dialect: Dialect,
) -> None:
    fake = backend()

    async def main() -> None:
        async with served(fake) as pool:
            assert await chat(pool, SERVER, KEY, dialect, "hello", 8) == "".join(REPLY)
            # Again, on the kept-alive connection.
            assert await chat(pool, SERVER, KEY, dialect, "hello", 8) == "".join(REPLY)

    run(main)
    assert [c.messages[-1].content for c in fake.calls] == ["hello", "hello"]
    assert {c.params.max_tokens for c in fake.calls} == {8}


def test_a_half_open_connection_fails_after_the_client_timeout() -> None:
    async def main() -> None:
        net = network()
        listener = await net.host(SERVER).open_tcp_listener("0.0.0.0", API_PORT)
        async with trio.open_nursery() as nursery:

            async def half_open_each_connection() -> None:
                # The server's end learns of the break; the client's end never does.
                while True:
                    net.half_open(cast(SimStream, await listener.accept()))

            nursery.start_soon(half_open_each_connection)
            started = trio.current_time()
            async with client(net) as pool:
                with pytest.raises(ChatFailed, match="half-open"):
                    await chat(pool, SERVER, KEY, DIALECTS[0], "hello", 8)
            assert trio.current_time() - started >= HALF_OPEN_TIMEOUT
            nursery.cancel_scope.cancel()

    run(main)


def test_a_slow_server_is_waited_for_past_the_half_open_timeout() -> None:
    fake = backend(pause=2 * HALF_OPEN_TIMEOUT)

    async def main() -> None:
        async with served(fake) as pool:
            started = trio.current_time()
            assert await chat(pool, SERVER, KEY, DIALECTS[1], "hello", 8) == "".join(REPLY)
            assert trio.current_time() - started >= 2 * HALF_OPEN_TIMEOUT

    run(main)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_a_wrong_key_fails_in_every_dialect(dialect: Dialect) -> None:
    fake = backend()

    async def main() -> None:
        async with served(fake) as pool:
            with pytest.raises(ChatFailed, match=r"^401 "):
                await chat(pool, SERVER, "not-the-key", dialect, "hello", 8)

    run(main)
    assert fake.calls == []
