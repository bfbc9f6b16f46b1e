"""A wire between two interfaces with a delay and a loss rate of its own: what `tc netem`
does, for kernels built without it. Frames are read from each interface with a packet
socket and written to the other (GSO and checksum offload pass through in the virtio
header, so large TCP segments cross whole).

    python -m tests.integration.relay HOST_SIDE BRIDGE_SIDE CONTROL_FILE

CONTROL_FILE holds `DELAY_MS LOSS_PERCENT CUT`, reread every 50 ms: frames the host
sends wait DELAY_MS and are dropped with LOSS_PERCENT probability, as netem on the host's
interface would; CUT=1 drops every frame both ways. Prints "ready" once both sockets are
bound."""

from __future__ import annotations

import heapq
import random
import select
import socket
import sys
import time
from contextlib import suppress
from pathlib import Path

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4


def _open(device: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.bind((device, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def _rule(path: str) -> tuple[float, float, bool]:
    delay_ms, loss_percent, cut = Path(path).read_text().split()
    return float(delay_ms) / 1000, float(loss_percent) / 100, cut == "1"


def main(host_side: str, bridge_side: str, control: str) -> None:
    from_host, from_bridge = _open(host_side), _open(bridge_side)
    peer = {from_host: from_bridge, from_bridge: from_host}
    delay, loss, cut = _rule(control)
    read_at = time.monotonic()
    pending: list[tuple[float, int, socket.socket, bytes]] = []
    sequence = 0
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        wait = min(0.05, max(0.0, pending[0][0] - now)) if pending else 0.05
        readable, _, _ = select.select([from_host, from_bridge], [], [], wait)
        now = time.monotonic()
        if now - read_at >= 0.05:  # by content: two quick writes may share an mtime
            with suppress(OSError, ValueError):  # keep the rule while the file is replaced
                delay, loss, cut = _rule(control)
            read_at = now
        for sock in readable:
            while True:
                try:
                    frame, address = sock.recvfrom(70_000)
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING or cut:
                    continue  # our own writes, seen again; or the wire is cut
                if sock is from_host and random.random() < loss:
                    continue
                due = now + delay if sock is from_host else now
                sequence += 1
                heapq.heappush(pending, (due, sequence, peer[sock], frame))
        while pending and pending[0][0] <= time.monotonic():
            _, _, out, frame = heapq.heappop(pending)
            with suppress(OSError):  # a full queue drops the frame, as a busy wire would
                out.send(frame)


if __name__ == "__main__":
    main(*sys.argv[1:4])
