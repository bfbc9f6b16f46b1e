"""Guarded MLX ring sockets: only the rank to our left, proving the instance key, reaches
this rank's tensor socket.

MLX's `ring` backend binds each rank's address from the hostfile, accepts the first
connection that arrives and never asks who it is, and it has no hook for a proof. So a
rank on a network address does not give MLX that address. MLX binds a private port on
127.0.0.1 instead, and a guard listens on the ring address. The guard
admits one connection: from the IP of the rank to our left, after the doorbells'
challenge (`doorbell_guard.admit`, with purpose "ring" so that a doorbell proof is no
ring proof), then relays between it and MLX's private port, and stops listening.
On the other side MLX is told that its right neighbour lives at a private 127.0.0.1
port of ours. A connector dials the neighbour's real ring address, proves this rank,
and only then listens there for MLX, so a refusal leaves MLX's own connect failing
with its usual error instead of a ring that forms and then hangs.

Between the connector and the guard every chunk MLX writes is sealed with the cipher the
handshake gave (`sealed_socket.py`): the token ids that tensor ranks share, the hidden
states and the logits cross the network encrypted and integrity-protected. A chunk that
fails its check ends both relays, and MLX sees its ring break, as when a rank dies.

MLX reads only two entries of its hostfile: its own (to bind) and its right neighbour's
(to dial). So each rank's hostfile differs from the ring list in just those two.

The guard runs in a small process of its own (`GuardProcess`), not in the runner: MLX holds the
GIL while its `init` waits in `accept`, so a guard thread in the runner could never
answer the proof that lets the neighbour's MLX in (it deadlocked so), and the relays
would otherwise wait on the runner's Python between evaluations. It exits when the
runner closes its stdin (or dies).

Ranks on loopback addresses (all on one machine) keep the direct path: nothing off the
machine reaches them. Costs, measured in `benchmarks/ring_guard.py`: two more hops in
user space per message, and sealing and opening each chunk. Not covered: a process on
the rank's own machine can reach the private ports.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import suppress

from exo.engine.doorbell_guard import admit, host_ips, log, prove, split_address
from exo.engine.sealed_socket import receive_sealed, send_sealed
from exo.link_cipher import FrameError, LinkCipher

PURPOSE = "ring"
# How long a rank's proof may take once connected. Dialling itself goes on until the
# guard closes: a neighbour whose runner starts late is waited for, as MLX waits in
# `accept`, and it is MLX's own connect that gives up (after about 15 s of tries).
PROOF_TIMEOUT = 60.0
_POLL = 0.5
_REDIAL = 0.1
_CHUNK = 1 << 20
_LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    return all(ipaddress.ip_address(ip).is_loopback for ip in host_ips(host))


class RingGuard:
    """This rank's guard (in front of MLX's listening socket) and connector (in front of
    its dial to the right). `hostfile`: the addresses to hand MLX instead of `hosts`.
    `always`: guard loopback addresses too (tests and the benchmark)."""

    def __init__(self, rank: int, hosts: list[str], key: bytes, always: bool = False) -> None:
        size = len(hosts)
        self._rank, self._key = rank, key
        self._left, self._right = (rank - 1) % size, (rank + 1) % size
        self._ips = [host_ips(split_address(h)[0]) for h in hosts]
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        self.hostfile = list(hosts)
        own = split_address(hosts[rank])
        if always or not is_loopback(own[0]):
            private = self._bound(reuse_port=True)  # held so nobody else takes the port
            listener = self._keep(socket.create_server(own))
            listener.settimeout(_POLL)
            port = private.getsockname()[1]
            self.hostfile[rank] = f"{_LOOPBACK}:{port}"
            self._start(self._guard, listener, port)
        right = split_address(hosts[self._right])
        if always or not is_loopback(right[0]):
            local = self._bound(reuse_port=False)
            self.hostfile[self._right] = f"{_LOOPBACK}:{local.getsockname()[1]}"
            self._start(self._connector, local, right)

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _guard(self, listener: socket.socket, private_port: int) -> None:
        """Admit the left rank once it proves itself; relay it to MLX's private port."""
        while not self._closed.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self._keep(sock)
            admitted = admit(sock, self._key, self._rank, self._ips, PURPOSE, self._left)
            if admitted is None:
                sock.close()
                continue
            listener.close()
            mlx = self._dial((_LOOPBACK, private_port))
            if mlx is not None:
                _relay(mlx, sock, admitted.cipher)
            return

    def _connector(self, local: socket.socket, right: tuple[str, int]) -> None:
        """Dial the right rank's guard and prove this rank; then let MLX in and relay."""
        remote = self._dial(right)
        if remote is None:
            return  # closed
        try:
            cipher = prove(remote, self._key, self._rank, self._right, PROOF_TIMEOUT, PURPOSE)
        except RuntimeError as exc:
            log.warning("%s", exc)
            remote.close()
            return
        local.listen(1)
        local.settimeout(_POLL)
        while not self._closed.is_set():
            try:
                mlx, _ = local.accept()  # from this machine: `local` is on 127.0.0.1
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self._keep(mlx)
            local.close()
            _relay(mlx, remote, cipher)
            return

    def _dial(self, address: tuple[str, int]) -> socket.socket | None:
        """A connection to `address` once it listens; None if the guard closes first."""
        while not self._closed.is_set():
            try:
                return self._keep(socket.create_connection(address, timeout=5))
            except OSError:
                self._closed.wait(_REDIAL)
        return None

    def _bound(self, reuse_port: bool) -> socket.socket:
        sock = self._keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # MLX binds the same port with SO_REUSEPORT; we never listen on it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((_LOOPBACK, 0))
        return sock

    def _keep(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    def _start(self, target: Callable[..., None], *args: object) -> None:
        threading.Thread(target=target, args=args, name="ring-guard", daemon=True).start()


def _relay(mlx: socket.socket, peer: socket.socket, cipher: LinkCipher) -> None:
    """Seal what MLX writes toward the peer, open what the peer sends to MLX."""
    for sock in (mlx, peer):
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for pump in (_seal, _open):
        threading.Thread(
            target=pump, args=(mlx, peer, cipher), name="ring-relay", daemon=True
        ).start()


def _seal(mlx: socket.socket, peer: socket.socket, cipher: LinkCipher) -> None:
    """Send each chunk MLX writes to the peer sealed, until either ends."""
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        while received := mlx.recv_into(buffer):
            send_sealed(peer, cipher, view[:received])
    except OSError:
        pass
    _end(mlx, peer)


def _open(mlx: socket.socket, peer: socket.socket, cipher: LinkCipher) -> None:
    """Give MLX each message the peer sends once it opens, until either ends."""
    try:
        while (message := receive_sealed(peer, cipher)) is not None:
            mlx.sendall(message)
    except FrameError as exc:
        log.warning("ring: a message from the neighbour: %s; the ring is broken", exc)
    except OSError:
        pass
    _end(mlx, peer)


def _end(*socks: socket.socket) -> None:
    """End both sides of a relay, as a broken ring does."""
    for sock in socks:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class GuardProcess:
    """The runner's handle on its guard process: `hostfile` is what MLX gets."""

    def __init__(self, rank: int, hosts: list[str], key: bytes, always: bool) -> None:
        self.hostfile = hosts
        self._process: subprocess.Popen[str] | None = None
        if not always and all(is_loopback(split_address(h)[0]) for h in hosts):
            return  # one machine: nothing to guard, and no process to start
        self._process = subprocess.Popen(
            [sys.executable, "-m", "exo.engine.ring_guard"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        order = {"rank": rank, "hosts": hosts, "key": key.hex(), "always": always}
        self._process.stdin.write(json.dumps(order) + "\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline()
        if not answer:
            self._process.wait()
            raise RuntimeError(
                f"[ring] the ring guard did not start (exit {self._process.returncode})"
            )
        self.hostfile = json.loads(answer)

    def close(self) -> None:
        if self._process is None:
            return
        assert self._process.stdin is not None
        with suppress(OSError):
            self._process.stdin.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


def main() -> None:
    """The guard process: one order on stdin, the hostfile on stdout, then guard until
    stdin ends."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="runner: %(message)s")
    order = json.loads(sys.stdin.readline())
    guard = RingGuard(
        int(order["rank"]), list(order["hosts"]), bytes.fromhex(order["key"]), bool(order["always"])
    )
    print(json.dumps(guard.hostfile), flush=True)
    sys.stdin.read()  # until the runner closes it or exits
    guard.close()


if __name__ == "__main__":
    main()
