"""What crosses the network between ranks is sealed (real sockets on 127.0.0.1, with a
wire tap in the path): a tap sees neither a doorbell's cache operations nor the ring's
tensor bytes; one flipped byte breaks the connection loudly; a recorded handshake
replayed is refused; and a listener at a rank's address without the instance key is
found out by the connector before anything is sent to it."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from exo.engine.doorbell import DOORBELL_OFFSET, Bell, Doorbells
from exo.engine.doorbell_guard import CHALLENGE_BYTES, receive_exactly, split_address
from exo.engine.ring_guard import RingGuard
from exo.engine.sealed_socket import MAX_SEALED, receive_sealed
from exo.link_cipher import FrameError, link_cipher
from tests.engine.test_doorbell import _ring_address
from tests.engine.test_ring_guard import _mlx_dial, _mlx_listener
from tests.integration.nodes import free_port

KEY = bytes(range(32))
SECRET = b"the prompt's token ids"


class Tap:
    """A TCP relay in the path that keeps a copy of what the dialer sends, and flips one
    byte of the next chunk it forwards when told to."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.seen = bytearray()
        self.flip = threading.Event()
        self._target = target
        self._socks: list[socket.socket] = [self._server]
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        for sock in self._socks:
            sock.close()

    def _serve(self) -> None:
        try:
            dialer, _ = self._server.accept()
        except OSError:
            return
        target = socket.create_connection(self._target, timeout=5)
        self._socks += [dialer, target]
        threading.Thread(target=self._copy, args=(target, dialer, False), daemon=True).start()
        self._copy(dialer, target, True)

    def _copy(self, source: socket.socket, sink: socket.socket, keep: bool) -> None:
        source.settimeout(None)
        try:
            while chunk := source.recv(1 << 16):
                if keep:
                    self.seen += chunk
                    if self.flip.is_set():
                        self.flip.clear()
                        chunk = chunk[:-1] + bytes([chunk[-1] ^ 0x01])
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tapped_doorbells() -> Iterator[tuple[Doorbells, Doorbells, Tap, list[str]]]:
    """Rank 0 reaches rank 1's doorbell through a tap; the hosts rank 1 knows."""
    hosts = [_ring_address(), _ring_address()]
    follower = Doorbells(1, hosts, KEY)
    host, port = split_address(hosts[1])
    tap = Tap((host, port + DOORBELL_OFFSET))
    head = Doorbells(0, [hosts[0], f"127.0.0.1:{tap.port - DOORBELL_OFFSET}"], KEY)
    yield head, follower, tap, hosts
    for each in (head, follower, tap):
        each.close()


def test_a_tap_sees_no_doorbell_message_and_a_flipped_byte_ends_the_wait(
    tapped_doorbells: tuple[Doorbells, Doorbells, Tap, list[str]],
) -> None:
    head, follower, tap, _ = tapped_doorbells
    bell = Bell(3, 1, 2, 4, 0, SECRET * 10)
    head.ring(1, bell)
    assert follower.wait(0) == bell
    assert len(tap.seen) > len(SECRET) * 10 and SECRET not in tap.seen
    tap.flip.set()
    head.ring(1, bell)
    with pytest.raises(RuntimeError, match="failed its integrity check"):
        follower.wait(0)


def test_a_recorded_handshake_replayed_is_refused(
    tapped_doorbells: tuple[Doorbells, Doorbells, Tap, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    head, follower, tap, hosts = tapped_doorbells
    head.ring(1, Bell(3))
    assert follower.wait(0) == Bell(3)
    answer = bytes(tap.seen[: 4 + 32 + 32])  # rank, ephemeral key, proof
    host, port = split_address(hosts[1])
    with (
        caplog.at_level(logging.WARNING, logger="exo.doorbell"),
        socket.create_connection((host, port + DOORBELL_OFFSET), timeout=5) as replay,
    ):
        assert receive_exactly(replay, CHALLENGE_BYTES) is not None
        replay.sendall(answer)
        assert replay.recv(1) == b""
    assert "claims rank 0 without the instance key" in caplog.text


def test_a_listener_without_the_key_is_found_out_by_the_connector() -> None:
    """It sends a challenge and admits anything, but cannot prove the key back."""
    impostor = socket.create_server(("127.0.0.1", 0))
    port = impostor.getsockname()[1]
    received = bytearray()

    def pretend() -> None:
        sock, _ = impostor.accept()
        with sock:
            sock.sendall(bytes(CHALLENGE_BYTES - 1) + b"\x09")
            received.extend(receive_exactly(sock, 68) or b"")
            sock.sendall(b"\x01" + bytes(32))
            while chunk := sock.recv(1 << 16):
                received.extend(chunk)

    threading.Thread(target=pretend, daemon=True).start()
    head = Doorbells(0, [_ring_address(), f"127.0.0.1:{port - DOORBELL_OFFSET}"], KEY)
    try:
        with pytest.raises(RuntimeError, match="does not hold the instance key"):
            head.ring(1, Bell(3, ops=SECRET))
    finally:
        head.close()
        impostor.close()
    time.sleep(0.2)
    assert SECRET not in received and len(received) == 68  # the answer, and nothing after


def test_a_tap_on_the_ring_sees_no_tensor_and_a_flipped_byte_breaks_the_ring(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hosts = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    tap = Tap(split_address(hosts[1]))
    guards = [
        RingGuard(1, hosts, KEY, always=True),
        RingGuard(0, [hosts[0], f"127.0.0.1:{tap.port}", hosts[2]], KEY, always=True),
    ]
    listener = _mlx_listener(guards[0], 1)
    dialled = _mlx_dial(guards[1], 1)
    accepted, _ = listener.accept()
    try:
        payload = SECRET * 50_000  # about 1 MiB: several relay chunks
        dialled.sendall(payload)
        received = bytearray()
        while len(received) < len(payload):
            received += accepted.recv(1 << 20)
        assert received == payload
        assert len(tap.seen) > len(payload) and SECRET not in tap.seen
        with caplog.at_level(logging.WARNING, logger="exo.doorbell"):
            tap.flip.set()
            dialled.sendall(b"one more tensor")
            accepted.settimeout(10)
            assert accepted.recv(1 << 10) == b""  # the guard ended MLX's connection
        assert "failed its integrity check" in caplog.text and "ring is broken" in caplog.text
    finally:
        for each in (dialled, accepted, listener, tap, *guards):
            each.close()


def test_a_sealed_message_longer_than_allowed_is_refused_unread() -> None:
    cipher = link_cipher(bytes(32), KEY, b"test", dialer=False)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall((MAX_SEALED + 1).to_bytes(4, "big"))
        with pytest.raises(FrameError, match=f"{MAX_SEALED + 1} bytes"):
            receive_sealed(ours, cipher)
        theirs.sendall(bytes(3))
        theirs.close()
        assert receive_sealed(ours, cipher) is None  # the connection ended mid-length
