"""Who may ring a rank's doorbell: only the instance's own ranks, proven two ways; and
what they say to each other is sealed.

Anyone who reaches a doorbell port could otherwise say "I am rank 1" and feed rank 0's
passes to a follower, or take a follower's place. So the accepting rank admits a
connection only when

1. its remote IP is the IP of the rank it claims to be (from the ring addresses in
   `Load`; a loopback address for a rank on 127.0.0.1), and
2. it proves the instance's key. The acceptor sends 16 fresh random bytes and a fresh
   X25519 public key; the connector answers with its rank, its own fresh public key and
   HMAC-SHA256(key, transcript), where the transcript is the purpose ("doorbell",
   "ring"), the nonce, both ranks and both public keys, checked in constant time. The
   acceptor answers one byte and its own HMAC of the transcript, so the connector knows
   it reached a holder of the key too.

Both ends then seal every message with ChaCha20-Poly1305 under keys derived from the
X25519 secret, the instance key and the transcript (`exo/link_cipher.py`, as the peer
links do; `sealed_socket.py` frames them): a passive observer sees neither the token ids
nor the hidden states and logits, a changed byte breaks the connection, and keys of a
recorded connection cannot be recomputed from the instance key later.

The key is derived by the node from the cluster secret and the instance id
(`link_auth.instance_key`) and reaches the runner only in `Load`, on its private stdin
pipe: another instance's runners, and hosts without the cluster key, cannot compute it.
A fresh nonce and key per connection make a recorded answer useless. The MLX ring's own
sockets are guarded and sealed the same way, by relays in front of them (`ring_guard.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import struct
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exo.link_cipher import LinkCipher, link_cipher

log = logging.getLogger("exo.doorbell")

NONCE_BYTES = 16
PUBLIC_BYTES = 32
PROOF_BYTES = 32
# What the acceptor sends first: the nonce and its ephemeral public key.
CHALLENGE_BYTES = NONCE_BYTES + PUBLIC_BYTES
# How long an acceptor waits for a connection's answer before closing it (a slow
# impostor delays the real peer by at most this).
HANDSHAKE_TIMEOUT = 5.0
_RANK = struct.Struct("!i")
_ADMITTED = b"\x01"


class Admitted(NamedTuple):
    """A connection's proven rank and the cipher of what follows on it."""

    rank: int
    cipher: LinkCipher


class Answer(NamedTuple):
    """A connector's answer to a challenge, with what it needs to go on."""

    message: bytes
    transcript: bytes
    ephemeral: X25519PrivateKey


def transcript(purpose: str, challenge: bytes, rank: int, acceptor: int, public: bytes) -> bytes:
    """What both proofs cover: the purpose keeps a proof for one kind of port (doorbells,
    the ring's tensor sockets) from being accepted by the other."""
    return purpose.encode() + b"|" + challenge + _RANK.pack(rank) + _RANK.pack(acceptor) + public


def rank_proof(key: bytes, transcript: bytes) -> bytes:
    """The connector's HMAC: it holds the key and claims this rank on this connection."""
    return hmac.new(key, transcript, hashlib.sha256).digest()


def acceptor_proof(key: bytes, transcript: bytes) -> bytes:
    """The acceptor's HMAC of the same transcript, under its own label."""
    return hmac.new(key, b"admitted|" + transcript, hashlib.sha256).digest()


def answer_challenge(
    key: bytes, challenge: bytes, rank: int, acceptor: int, purpose: str
) -> Answer:
    """What a connector claiming `rank` sends back to `acceptor`'s challenge."""
    ephemeral = X25519PrivateKey.generate()
    public = _public(ephemeral)
    said = transcript(purpose, challenge, rank, acceptor, public)
    return Answer(_RANK.pack(rank) + public + rank_proof(key, said), said, ephemeral)


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


def _public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _cipher(
    private: X25519PrivateKey, theirs: bytes, key: bytes, said: bytes, *, connector: bool
) -> LinkCipher | None:
    """The connection's cipher, or None for a public key with no usable shared secret."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(theirs))
    except ValueError:  # a low-order point: the secret would be all zeros
        return None
    return link_cipher(shared, key, said, dialer=connector)


def admit(
    sock: socket.socket,
    key: bytes,
    rank: int,
    hosts: list[frozenset[str]],
    purpose: str = "doorbell",
    only: int | None = None,
) -> Admitted | None:
    """The rank `sock` proved to be and the connection's cipher, or None (logged, and the
    caller closes it). `only`: the one rank that may connect (the ring's left neighbour),
    if just one may."""
    ephemeral = X25519PrivateKey.generate()
    challenge = os.urandom(NONCE_BYTES) + _public(ephemeral)
    try:
        peer_ip = str(sock.getpeername()[0])  # OSError if it is already gone
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.sendall(challenge)
        answer = receive_exactly(sock, _RANK.size + PUBLIC_BYTES + PROOF_BYTES)
    except OSError as exc:
        log.warning("%s: a connection broke before its proof: %s", purpose, exc)
        return None
    if answer is None:
        log.warning(
            "%s: %s sent no proof within %.0f s; closed", purpose, peer_ip, HANDSHAKE_TIMEOUT
        )
        return None
    (claimed,) = _RANK.unpack(answer[: _RANK.size])
    theirs = answer[_RANK.size : _RANK.size + PUBLIC_BYTES]
    if not 0 <= claimed < len(hosts) or claimed == rank or only not in (None, claimed):
        log.warning("%s: %s claims rank %d, not a peer of rank %d", purpose, peer_ip, claimed, rank)
        return None
    if not _is_from(peer_ip, hosts[claimed]):
        log.warning("%s: %s claims rank %d, whose host is elsewhere", purpose, peer_ip, claimed)
        return None
    said = transcript(purpose, challenge, claimed, rank, theirs)
    cipher = _cipher(ephemeral, theirs, key, said, connector=False)
    if not hmac.compare_digest(answer[-PROOF_BYTES:], rank_proof(key, said)) or cipher is None:
        log.warning("%s: %s claims rank %d without the instance key", purpose, peer_ip, claimed)
        return None
    try:
        sock.sendall(_ADMITTED + acceptor_proof(key, said))
    except OSError:
        return None
    sock.settimeout(None)
    return Admitted(claimed, cipher)


def prove(
    sock: socket.socket, key: bytes, rank: int, to: int, timeout: float, purpose: str = "doorbell"
) -> LinkCipher:
    """Answer rank `to`'s challenge as `rank`; the connection's cipher, or `RuntimeError`
    when it refuses us or does not prove the key itself."""
    sock.settimeout(timeout)
    verdict = answer = challenge = None
    try:
        challenge = receive_exactly(sock, CHALLENGE_BYTES)
        if challenge is not None:
            answer = answer_challenge(key, challenge, rank, to, purpose)
            sock.sendall(answer.message)
            verdict = receive_exactly(sock, len(_ADMITTED) + PROOF_BYTES)
    except OSError:
        pass
    if challenge is None or answer is None or verdict is None or verdict[:1] != _ADMITTED:
        raise RuntimeError(
            f"[ring {purpose}] rank {to} refused us (a different instance key, or our "
            "address is not the one in its ring list)"
        )
    theirs = challenge[NONCE_BYTES:]
    cipher = _cipher(answer.ephemeral, theirs, key, answer.transcript, connector=True)
    expected = acceptor_proof(key, answer.transcript)
    if cipher is None or not hmac.compare_digest(verdict[len(_ADMITTED) :], expected):
        raise RuntimeError(
            f"[ring {purpose}] whoever answers at rank {to}'s address does not hold the "
            "instance key: not that rank of this instance"
        )
    sock.settimeout(None)
    return cipher


def receive_exactly(sock: socket.socket, size: int) -> bytes | None:
    """Exactly `size` bytes, read into one buffer (a ring relay reads sealed chunks of up
    to 1 MiB through it); None if the connection ends or breaks first."""
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        try:
            count = sock.recv_into(view[got:])
        except OSError:
            return None
        if not count:
            return None
        got += count
    return bytes(data)
