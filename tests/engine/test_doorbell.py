"""Guarded doorbells on real sockets (127.0.0.1): the instance's ranks get through;
strangers (a wrong key, a wrong or impossible rank, garbage, silence, a host that is
not the claimed rank's) are refused and logged, and the real rank still gets through
after them."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from exo.engine import doorbell_guard
from exo.engine.doorbell import DOORBELL_OFFSET, Bell, Doorbells
from exo.engine.doorbell_guard import CHALLENGE_BYTES, answer_challenge, receive_exactly

KEY = bytes(range(32))


def _ring_address() -> str:
    """A ring address whose doorbell port is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port - DOORBELL_OFFSET}"


@pytest.fixture
def hosts() -> list[str]:
    return [_ring_address(), _ring_address()]


@pytest.fixture
def follower(hosts: list[str]) -> Iterator[Doorbells]:
    bells = Doorbells(1, hosts, KEY)
    yield bells
    bells.close()


def _dial(hosts: list[str], rank: int) -> socket.socket:
    host, _, port = hosts[rank].rpartition(":")
    return socket.create_connection((host, int(port) + DOORBELL_OFFSET), timeout=5)


def _answer(sock: socket.socket, key: bytes, claimed: int, acceptor: int = 1) -> bytes:
    """Answer the challenge as `claimed` under `key`; what the acceptor says back."""
    challenge = receive_exactly(sock, CHALLENGE_BYTES)
    assert challenge is not None
    sock.sendall(answer_challenge(key, challenge, claimed, acceptor, "doorbell").message)
    return sock.recv(1)


def _closed(sock: socket.socket) -> bool:
    """Whether the acceptor closed `sock` after its challenge (without admitting it)."""
    try:
        return receive_exactly(sock, CHALLENGE_BYTES) is not None and sock.recv(1) == b""
    except ConnectionResetError:  # closed with our junk unread
        return True


def _ring_through(hosts: list[str], follower: Doorbells, key: bytes = KEY) -> None:
    head = Doorbells(0, hosts, key)
    try:
        head.ring(1, Bell(3, 1, 2, 4, 0, b"ops"))
        assert follower.wait(0) == Bell(3, 1, 2, 4, 0, b"ops")
    finally:
        head.close()


def test_the_instances_ranks_get_through(hosts: list[str], follower: Doorbells) -> None:
    _ring_through(hosts, follower)


def test_strangers_are_refused_and_the_real_rank_still_gets_through(
    hosts: list[str],
    follower: Doorbells,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doorbell_guard, "HANDSHAKE_TIMEOUT", 0.5)
    with caplog.at_level(logging.WARNING, logger="exo.doorbell"):
        with _dial(hosts, 1) as wrong_key:
            assert _answer(wrong_key, b"another instance", 0) == b""
        with _dial(hosts, 1) as itself:
            assert _answer(itself, KEY, 1) == b""
        with _dial(hosts, 1) as no_such_rank:
            assert _answer(no_such_rank, KEY, 7) == b""
        for junk in (b"GET / HTTP/1.1\r\n\r\n" * 4, bytes(4) + b"\xff" * 64):
            with _dial(hosts, 1) as garbage:
                garbage.sendall(junk)
                assert _closed(garbage)
        with _dial(hosts, 1) as silent:
            silent.settimeout(5)
            assert receive_exactly(silent, CHALLENGE_BYTES) is not None
            assert silent.recv(1) == b""  # closed after 0.5 s
        _ring_through(hosts, follower)
    reasons = [r.getMessage() for r in caplog.records]
    assert sum("without the instance key" in r for r in reasons) == 2  # wrong key, junk
    assert sum("not a peer of rank 1" in r for r in reasons) == 3  # itself, 7, "GET "
    assert sum("sent no proof" in r for r in reasons) == 1


def test_a_rank_must_connect_from_its_own_host(caplog: pytest.LogCaptureFixture) -> None:
    """Rank 0 is at 10.9.9.9: a proof from 127.0.0.1, even with the key, is refused."""
    hosts = ["10.9.9.9:40000", _ring_address()]
    bells = Doorbells(1, hosts, KEY)
    try:
        with caplog.at_level(logging.WARNING, logger="exo.doorbell"), _dial(hosts, 1) as sock:
            assert _answer(sock, KEY, 0) == b""
    finally:
        bells.close()
    assert "claims rank 0, whose host is elsewhere" in caplog.text


def test_a_rank_with_another_key_is_told_it_was_refused(
    hosts: list[str], follower: Doorbells
) -> None:
    head = Doorbells(0, hosts, b"another instance")
    try:
        with pytest.raises(RuntimeError, match="rank 1 refused us"):
            head.ring(1, Bell(3))
    finally:
        head.close()
