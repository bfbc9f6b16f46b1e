"""Who may ring a rank's doorbell: only the instance's own ranks, proven two ways.

Anyone who reaches a doorbell port could otherwise say "I am rank 1" and feed rank 0's
passes to a follower, or take a follower's place. So the accepting rank admits a
connection only when

1. its remote IP is the IP of the rank it claims to be (from the ring addresses in
   `Load`; a loopback address for a rank on 127.0.0.1), and
2. it proves the instance's key: the acceptor sends 16 fresh random bytes, the
   connector answers with its rank and HMAC-SHA256(key, "doorbell|" nonce rank
   acceptor-rank), checked in constant time; the acceptor acknowledges with one byte.

The key is derived by the node from the cluster secret and the instance id
(`link_auth.instance_key`) and reaches the runner only in `Load`, on its private stdin
pipe: another instance's runners, and hosts without the cluster key, cannot compute it.
A fresh nonce per connection makes a recorded answer useless. The MLX ring's own
sockets are guarded the same way, by relays in front of them (`ring_guard.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import struct

log = logging.getLogger("exo.doorbell")

NONCE_BYTES = 16
PROOF_BYTES = 32
# How long an acceptor waits for a connection's answer before closing it (a slow
# impostor delays the real peer by at most this).
HANDSHAKE_TIMEOUT = 5.0
_RANK = struct.Struct("!i")
_ADMITTED = b"\x01"


def doorbell_proof(
    key: bytes, nonce: bytes, rank: int, acceptor: int, purpose: str = "doorbell"
) -> bytes:
    """The HMAC that proves `rank` to `acceptor`; `purpose` keeps a proof for one kind of
    port (doorbells, the ring's tensor sockets) from being accepted by the other."""
    text = purpose.encode() + b"|" + nonce + _RANK.pack(rank) + _RANK.pack(acceptor)
    return hmac.new(key, text, hashlib.sha256).digest()


def split_address(address: str) -> tuple[str, int]:
    """A ring address ("ip:port", "[v6]:port") as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def host_ips(host: str) -> frozenset[str]:
    """The IPs a ring address's host stands for (itself, for the usual literal IP)."""
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return frozenset(str(info[4][0]) for info in infos)


def _is_from(peer_ip: str, ips: frozenset[str]) -> bool:
    address = ipaddress.ip_address(peer_ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    if str(address) in ips:
        return True
    return address.is_loopback and any(ipaddress.ip_address(ip).is_loopback for ip in ips)


def admit(
    sock: socket.socket,
    key: bytes,
    rank: int,
    hosts: list[frozenset[str]],
    purpose: str = "doorbell",
    only: int | None = None,
) -> int | None:
    """The rank `sock` proved to be, or None (logged, and the caller closes it). `only`:
    the one rank that may connect (the ring's left neighbour), if just one may."""
    nonce = os.urandom(NONCE_BYTES)
    try:
        peer_ip = str(sock.getpeername()[0])  # OSError if it is already gone
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.sendall(nonce)
        answer = receive_exactly(sock, _RANK.size + PROOF_BYTES)
    except OSError as exc:
        log.warning("%s: a connection broke before its proof: %s", purpose, exc)
        return None
    if answer is None:
        log.warning(
            "%s: %s sent no proof within %.0f s; closed", purpose, peer_ip, HANDSHAKE_TIMEOUT
        )
        return None
    (claimed,) = _RANK.unpack(answer[: _RANK.size])
    if not 0 <= claimed < len(hosts) or claimed == rank or only not in (None, claimed):
        log.warning("%s: %s claims rank %d, not a peer of rank %d", purpose, peer_ip, claimed, rank)
        return None
    if not _is_from(peer_ip, hosts[claimed]):
        log.warning("%s: %s claims rank %d, whose host is elsewhere", purpose, peer_ip, claimed)
        return None
    expected = doorbell_proof(key, nonce, claimed, rank, purpose)
    if not hmac.compare_digest(answer[_RANK.size :], expected):
        log.warning("%s: %s claims rank %d without the instance key", purpose, peer_ip, claimed)
        return None
    try:
        sock.sendall(_ADMITTED)
    except OSError:
        return None
    sock.settimeout(None)
    return claimed


def prove(
    sock: socket.socket, key: bytes, rank: int, to: int, timeout: float, purpose: str = "doorbell"
) -> None:
    """Answer rank `to`'s challenge as `rank`; `RuntimeError` when it refuses us."""
    sock.settimeout(timeout)
    verdict = None
    try:
        nonce = receive_exactly(sock, NONCE_BYTES)
        if nonce is not None:
            sock.sendall(_RANK.pack(rank) + doorbell_proof(key, nonce, rank, to, purpose))
            verdict = receive_exactly(sock, len(_ADMITTED))
    except OSError:
        pass
    if verdict != _ADMITTED:
        raise RuntimeError(
            f"[ring {purpose}] rank {to} refused us (a different instance key, or our "
            "address is not the one in its ring list)"
        )
    sock.settimeout(None)


def receive_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)
