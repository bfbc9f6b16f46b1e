"""The ring guard on real sockets (127.0.0.1, guarded as a network address would be):
MLX's sockets, played here by plain sockets bound and dialled as MLX does from the
hostfile the guard hands out, reach each other only through relays; a stranger that
reaches a rank's ring port first, or a doorbell proof replayed there, is refused and
logged and the left neighbour still gets in; a connector refused by its neighbour never
lets its MLX connect; the guard process starts, hands out a hostfile and ends with its
runner's stdin."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from exo.engine.doorbell_guard import (
    CHALLENGE_BYTES,
    answer_challenge,
    receive_exactly,
    split_address,
)
from exo.engine.ring_guard import GuardProcess, RingGuard
from tests.integration.nodes import free_port

KEY = bytes(range(32))


@pytest.fixture
def hosts() -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(3)]


@pytest.fixture
def guards(hosts: list[str]) -> Iterator[list[RingGuard]]:
    made: list[RingGuard] = []
    yield made
    for guard in made:
        guard.close()


def _mlx_listener(guard: RingGuard, rank: int) -> socket.socket:
    """What MLX's `accept_connections` does with its own hostfile entry."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(split_address(guard.hostfile[rank]))
    sock.listen(0)
    sock.settimeout(10)
    return sock


def _mlx_dial(guard: RingGuard, to: int, timeout: float = 10) -> socket.socket:
    """What MLX's `make_connections` does with its right neighbour's entry: tries until
    `timeout` (MLX: 5 tries over about 15 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(split_address(guard.hostfile[to]), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stranger(hosts: list[str], rank: int, claimed: int, key: bytes, purpose: str) -> bytes:
    """Dial rank's ring port, answer its challenge as `claimed`; what it says back."""
    with socket.create_connection(split_address(hosts[rank]), timeout=10) as sock:
        challenge = receive_exactly(sock, CHALLENGE_BYTES)
        assert challenge is not None
        sock.sendall(answer_challenge(key, challenge, claimed, rank, purpose).message)
        try:
            return sock.recv(1)
        except ConnectionResetError:
            return b""


def test_ranks_reach_each_other_only_through_the_relays(
    hosts: list[str], guards: list[RingGuard]
) -> None:
    guards += [RingGuard(r, hosts, KEY, always=True) for r in range(3)]
    for rank, guard in enumerate(guards):
        # MLX binds a private loopback port and dials a private one, never the ring list's.
        assert guard.hostfile[rank] != hosts[rank]
        assert guard.hostfile[(rank + 1) % 3] != hosts[(rank + 1) % 3]
    listeners = [_mlx_listener(g, r) for r, g in enumerate(guards)]
    dialled = [_mlx_dial(g, (r + 1) % 3) for r, g in enumerate(guards)]
    accepted = [listener.accept()[0] for listener in listeners]
    payload = bytes(range(256)) * 4096  # 1 MiB: several relay chunks
    for rank in range(3):
        right = (rank + 1) % 3
        dialled[rank].sendall(payload)
        received = bytearray()
        while len(received) < len(payload):
            received += accepted[right].recv(1 << 20)
        assert received == payload  # left to right
        accepted[right].sendall(b"back")
        assert dialled[rank].recv(4) == b"back"  # and right to left, as all-sums go
    for sock in (*listeners, *dialled, *accepted):
        sock.close()


@pytest.mark.parametrize(
    ("claimed", "key", "purpose"),
    [(0, b"w" * 32, "ring"), (2, KEY, "ring"), (0, KEY, "doorbell")],
    ids=["wrong key", "not the left rank", "a doorbell proof"],
)
def test_a_stranger_first_is_refused_and_the_left_rank_still_gets_in(
    hosts: list[str],
    guards: list[RingGuard],
    caplog: pytest.LogCaptureFixture,
    claimed: int,
    key: bytes,
    purpose: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="exo.doorbell")
    guards.append(RingGuard(1, hosts, KEY, always=True))
    listener = _mlx_listener(guards[0], 1)
    assert _stranger(hosts, 1, claimed, key, purpose) == b""
    assert f"claims rank {claimed} without the instance key" in caplog.text or (
        f"claims rank {claimed}, not a peer of rank 1" in caplog.text
    )
    guards.append(RingGuard(0, hosts, KEY, always=True))
    dialled = _mlx_dial(guards[1], 1)
    accepted, _ = listener.accept()
    dialled.sendall(b"tensor")
    assert accepted.recv(6) == b"tensor"
    # The port closes once the left rank is in: nobody else reaches it now.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(split_address(hosts[1]), timeout=5)
    for sock in (listener, dialled, accepted):
        sock.close()


def test_a_connector_refused_by_its_neighbour_never_lets_its_mlx_connect(
    hosts: list[str], guards: list[RingGuard], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="exo.doorbell")
    guards.append(RingGuard(1, hosts, KEY, always=True))
    guards.append(RingGuard(0, hosts, b"another instance's key!!".ljust(32), always=True))
    deadline = time.monotonic() + 10
    while "rank 1 refused us" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "[ring ring] rank 1 refused us" in caplog.text
    with pytest.raises(ConnectionRefusedError):
        _mlx_dial(guards[1], 1, timeout=2)


def test_the_guard_process_hands_out_a_hostfile_and_ends_with_stdin(hosts: list[str]) -> None:
    loopback = GuardProcess(0, hosts, KEY, always=False)
    assert loopback.hostfile == hosts  # one machine: no guard, no process
    loopback.close()
    guarded = GuardProcess(0, hosts, KEY, always=True)
    assert guarded.hostfile[0].startswith("127.0.0.1:") and guarded.hostfile[0] != hosts[0]
    assert guarded.hostfile[2] == hosts[2]  # MLX reads its own entry and its right's only
    with socket.create_connection(split_address(hosts[0]), timeout=10) as stranger:
        assert receive_exactly(stranger, CHALLENGE_BYTES) is not None  # the guard listens
    guarded.close()
    assert guarded._process is not None and guarded._process.returncode == 0
