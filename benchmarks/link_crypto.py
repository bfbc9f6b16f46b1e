"""What encrypted peer links cost: the handshake, and sealing and opening a frame.

The handshake: both sides of `exo/actors/link_auth.py`'s in one process, over an
in-memory stream pair wrapped by trio-websocket as a real link is (so the figure holds
the WebSocket framing and Trio's scheduling, not the TCP connect). A frame: sealed by one
end's `LinkCipher` and opened by the other's (`link_cipher.py`), for a typical control
frame (200 bytes) and a large data-plane or file frame (64 KiB). Medians of `--rounds`
rounds, in microseconds per handshake or per frame.

    .venv/bin/python benchmarks/link_crypto.py [--rounds 7] [--number 200]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream, wrap_server_stream

from exo.actors.link_auth import LinkAuth, cluster_secret
from exo.events.ids import NodeId
from exo.link_cipher import link_cipher

SECRET = cluster_secret("bench", "key")
DIALER = LinkAuth("bench", NodeId("node-a"), SECRET, 52416)
LISTENER = LinkAuth("bench", NodeId("node-b"), SECRET, 52416)


async def _websocket_pair(nursery: trio.Nursery) -> tuple[WebSocketConnection, ...]:
    """Both ends of a WebSocket over an in-memory stream pair."""
    # Typed for sockets, trio-websocket only reads and writes the stream.
    client_stream, server_stream = cast(tuple[Any, Any], trio.testing.memory_stream_pair())
    ends: dict[str, WebSocketConnection] = {}

    async def client() -> None:
        ends["client"] = await wrap_client_stream(nursery, client_stream, "bench", "/exo")

    async def server() -> None:
        ends["server"] = await (await wrap_server_stream(nursery, server_stream)).accept()

    async with trio.open_nursery() as both:
        both.start_soon(client)
        both.start_soon(server)
    return ends["client"], ends["server"]


async def _handshakes(number: int) -> float:
    """Seconds for `number` handshakes, each on a fresh WebSocket pair."""
    elapsed = 0.0
    for _ in range(number):
        async with trio.open_nursery() as nursery:
            client, server = await _websocket_pair(nursery)
            started = time.perf_counter()
            async with trio.open_nursery() as pair:
                pair.start_soon(DIALER.as_dialer, client, secrets.token_hex)
                pair.start_soon(LISTENER.as_listener, server, secrets.token_hex)
            elapsed += time.perf_counter() - started
            nursery.cancel_scope.cancel()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args(argv)
    trio.run(_handshakes, 10)  # warm
    times = [trio.run(_handshakes, args.number) for _ in range(args.rounds)]
    micros = statistics.median(times) / args.number * 1e6
    print(f"handshake, both sides   {micros:8.1f} µs (median of {args.rounds} x {args.number})")
    for size, number in ((200, 20_000), (64 * 1024, 2_000)):
        micros = _frame_micros(size, number, args.rounds)
        print(f"frame of {size:>5} bytes  {micros:8.1f} µs seal + open ({args.rounds} x {number})")
    return 0


def _frame_micros(size: int, number: int, rounds: int) -> float:
    """Microseconds to seal a frame of `size` bytes at one end and open it at the other."""
    shared, context = secrets.token_bytes(32), b"bench"
    sender = link_cipher(shared, SECRET, context, dialer=True)
    receiver = link_cipher(shared, SECRET, context, dialer=False)
    frame = secrets.token_bytes(size)
    times = timeit.repeat(lambda: receiver.open(sender.seal(frame)), number=number, repeat=rounds)
    return statistics.median(times) / number * 1e6


if __name__ == "__main__":
    raise SystemExit(main())
