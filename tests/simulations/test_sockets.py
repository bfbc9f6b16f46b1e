"""The simulated TCP under the link layer: ordered bytes, stalls across a partition,
resets when a node dies, refusals where nobody listens."""

import random

import pytest
import trio
import trio.testing

from simulations.network import LinkModel
from simulations.sockets import WINDOW, SimSockets

A, B = "10.0.0.1", "10.0.0.2"


def sockets(blocked: set[tuple[str, str]], lines: list[str]) -> SimSockets:
    return SimSockets(
        random.Random(0),
        LinkModel(latency=0.01, jitter=0.005),
        lambda a, b: (a, b) not in blocked,
        lines.append,
    )


def run(test: object) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_bytes_arrive_in_order_after_the_latency_and_are_traced() -> None:
    lines: list[str] = []

    async def main() -> None:
        net = sockets(set(), lines)
        listener = await net.host(B).open_tcp_listener("0.0.0.0", 9000)
        client = await net.host(A).open_tcp_stream(B, 9000)
        server = await listener.accept()
        assert (client.remote_host, getattr(server, "remote_host", "")) == (B, A)
        started = trio.current_time()
        for part in (b"one ", b"two ", b"three"):
            await client.send_all(part)
        received = b""
        while len(received) < len(b"one two three"):
            received += await server.receive_some(3)
        assert received == b"one two three"
        assert trio.current_time() - started >= 0.01
        await client.aclose()
        assert await server.receive_some() == b""  # EOF after the bytes sent

    run(main)
    assert any(line.endswith(f"{A}>{B} tcp 3") for line in lines)


def test_a_partition_stalls_both_directions_until_it_heals() -> None:
    blocked: set[tuple[str, str]] = set()

    async def main() -> None:
        net = sockets(blocked, [])
        listener = await net.host(B).open_tcp_listener("0.0.0.0", 9000)
        client = await net.host(A).open_tcp_stream(B, 9000)
        server = await listener.accept()
        blocked.add((B, A))  # one way only: TCP's acknowledgements cannot come back
        net.changed()
        await client.send_all(b"held")
        with trio.move_on_after(5):
            await server.receive_some()
            pytest.fail("bytes crossed a partition")
        blocked.clear()
        net.changed()
        assert await server.receive_some() == b"held"

    run(main)


def test_a_crash_resets_connections_and_refuses_new_ones() -> None:
    async def main() -> None:
        net = sockets(set(), [])
        listener = await net.host(B).open_tcp_listener("0.0.0.0", 9000)
        client = await net.host(A).open_tcp_stream(B, 9000)
        await listener.accept()
        net.crash(B)
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some()
        with pytest.raises(ConnectionRefusedError):
            await net.host(A).open_tcp_stream(B, 9000)

    run(main)


def test_a_sender_waits_while_the_receive_window_is_full() -> None:
    async def main() -> None:
        net = sockets(set(), [])
        listener = await net.host(B).open_tcp_listener("0.0.0.0", 0)
        client = await net.host(A).open_tcp_stream(B, listener.port)
        server = await listener.accept()
        await client.send_all(b"x" * WINDOW)
        with trio.move_on_after(5):
            await client.send_all(b"y")
            pytest.fail("the window did not hold the sender")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"y")
            got = 0
            while got < WINDOW + 1:
                got += len(await server.receive_some(65536))

    run(main)


def test_a_taken_port_is_refused() -> None:
    async def main() -> None:
        net = sockets(set(), [])
        await net.host(B).open_tcp_listener("0.0.0.0", 9000)
        with pytest.raises(OSError, match="in use"):
            await net.host(B).open_tcp_listener("0.0.0.0", 9000)

    run(main)


def test_multicast_reaches_every_member_not_across_a_partition() -> None:
    blocked: set[tuple[str, str]] = set()

    async def main() -> None:
        net = sockets(blocked, [])
        a, b, c = [await net.host(h).open_multicast("239.1.2.3", 7000) for h in (A, B, "10.0.0.3")]
        blocked.add((A, "10.0.0.3"))
        await a.send(b"hello")
        assert await b.receive(100) == (b"hello", A)
        assert await a.receive(100) == (b"hello", A)  # loopback, as IP_MULTICAST_LOOP
        with trio.move_on_after(5):
            await c.receive(100)
            pytest.fail("a datagram crossed a partition")
        net.crash(B)
        with pytest.raises(OSError):
            await b.receive(100)

    run(main)
