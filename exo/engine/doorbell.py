"""Doorbells: the small control messages between the ranks of a group, over TCP.

Why not through the MLX ring: a rank waiting in the ring's `recv` spins on its socket,
so an idle follower burned a whole core (measured: 99% CPU between requests) and, on a
small machine, a waiting rank took a core from the one computing. A doorbell wait
blocks in the kernel instead. Each message is a `Bell`: five int32s and the bytes of
rank 0's cache operations since the last pass (`mirror.py`), usually none, sealed as one
message (`sealed_socket.py`). The tensors that follow still travel through the ring
(sealed between hosts by `ring_guard.py`), and are sent only after the doorbell rang, so
the receiver spins for the transfer alone.

Each rank listens on its ring address's port + `DOORBELL_OFFSET`; a rank connects to
another on first use and proves it is that rank of this instance (`doorbell_guard.py`);
a thread admits the connections that prove it and drops the others, so a stranger
neither takes a rank's place nor stops the real rank from getting through. A peer that
dies closes its socket, and a message that fails its integrity check ends the wait too:
either raises `RuntimeError`, as a broken ring does.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import NamedTuple

from exo.engine.doorbell_guard import admit, host_ips, log, prove, split_address
from exo.engine.ring_guard import GuardProcess
from exo.engine.sealed_socket import receive_sealed, send_sealed
from exo.link_cipher import FrameError, LinkCipher

DOORBELL_OFFSET = 64
CONNECT_TIMEOUT = 60.0
_HEADER = struct.Struct("!5i")
# How often the accepting thread looks whether `close` was called.
_ACCEPT_POLL = 1.0


class Bell(NamedTuple):
    """One doorbell message: what comes next through the ring.

    `kind`: what to do (the strategies' own codes); `cache`: the number of the cache list
    the pass runs on; `rows` x `length`: the tokens of the pass; `dtype`: the index of the
    tensors' dtype; `ops`: cache operations to apply first (`mirror.Journal.take`).
    """

    kind: int
    cache: int = 0
    rows: int = 0
    length: int = 0
    dtype: int = 0
    ops: bytes = b""


def _split(address: str) -> tuple[str, int]:
    host, port = split_address(address)
    return host, port + DOORBELL_OFFSET


class Doorbells:
    """This rank's doorbell sockets. `key`: the instance's doorbell key from `Load` (empty
    for ranks started by hand, as tests do: then only the address check guards)."""

    def __init__(self, rank: int, hosts: list[str], key: bytes = b"") -> None:
        self._rank = rank
        self._key = key
        self._addresses = [_split(h) for h in hosts]
        self._ips = [host_ips(host) for host, _ in self._addresses]
        self._listener = socket.create_server(self._addresses[rank])
        self._listener.settimeout(_ACCEPT_POLL)
        self._out: dict[int, tuple[socket.socket, LinkCipher]] = {}
        self._in: dict[int, tuple[socket.socket, LinkCipher]] = {}
        self._admitted = threading.Condition()
        self._closed = False
        # The ring's guard process (`ring_guard.py`), kept for as long as the doorbells.
        self.ring_guard: GuardProcess | None = None
        threading.Thread(target=self._accept, name="doorbell-accept", daemon=True).start()

    def ring(self, to: int, bell: Bell) -> None:
        sock, cipher = self._out.get(to) or self._connect(to)
        *fields, ops = bell
        try:
            send_sealed(sock, cipher, _HEADER.pack(*fields) + ops)
        except OSError as exc:
            raise RuntimeError(f"[ring doorbell] rank {to} is gone: {exc}") from exc

    def wait(self, sender: int) -> Bell:
        """The next message from `sender`; blocks (without spinning) until it comes."""
        with self._admitted:
            self._admitted.wait_for(lambda: sender in self._in or self._closed)
            connection = self._in.get(sender)
        if connection is None:
            raise RuntimeError("[ring doorbell] closed")
        try:
            message = receive_sealed(*connection)
        except FrameError as exc:
            raise RuntimeError(f"[ring doorbell] a message from rank {sender}: {exc}") from None
        if message is None:
            raise RuntimeError(f"[ring doorbell] connection to rank {sender} was lost")
        if len(message) < _HEADER.size:
            raise RuntimeError(f"[ring doorbell] rank {sender} sent {len(message)} bytes")
        return Bell(*_HEADER.unpack_from(message), ops=bytes(message[_HEADER.size :]))

    def close(self) -> None:
        with self._admitted:
            self._closed = True
            self._admitted.notify_all()
        for sock, _ in (*self._out.values(), *self._in.values()):
            sock.close()
        self._listener.close()
        if self.ring_guard is not None:
            self.ring_guard.close()

    def _connect(self, to: int) -> tuple[socket.socket, LinkCipher]:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                sock = socket.create_connection(self._addresses[to], timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"[ring doorbell] rank {to} does not answer") from None
                time.sleep(0.05)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            cipher = prove(sock, self._key, self._rank, to, CONNECT_TIMEOUT)
        except RuntimeError:
            sock.close()
            raise
        self._out[to] = (sock, cipher)
        return sock, cipher

    def _accept(self) -> None:
        """Admit the ranks that prove themselves, one connection at a time, until closed."""
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            admitted = admit(sock, self._key, self._rank, self._ips)
            with self._admitted:
                if admitted is not None and admitted.rank in self._in:
                    log.warning("doorbell: rank %d is already connected; closed", admitted.rank)
                    admitted = None
                if admitted is None:
                    sock.close()
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._in[admitted.rank] = (sock, admitted.cipher)
                self._admitted.notify_all()
