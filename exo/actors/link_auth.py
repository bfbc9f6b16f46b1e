"""The link handshake: a mutual proof of the cluster key that also agrees the link's keys.

In the spirit of Noise's NNpsk0 (an ephemeral key each, a pre-shared key mixed in):

1. The dialer's hello: namespace, node id, a random nonce and a fresh X25519 public key.
2. The listener's hello, the same, with its proof: an HMAC-SHA256 under the cluster
   secret of its role and the transcript (both node ids, both nonces, both ephemeral
   public keys).
3. The dialer checks it and answers with its own proof (role "dialer"); the listener
   checks that and says "ok".

The key never crosses the wire. The proofs cover the ephemeral keys, so a man in the
middle without the key cannot swap them; the listener's fresh nonce and ephemeral key
make an old dialer's proof useless (a replayed handshake is refused). Both ends then
derive the link's two keys from the X25519 shared secret, the cluster secret and the
transcript (`exo/link_cipher.py`), and every frame after "ok" is sealed. The ephemeral
private keys live only for the handshake: whoever later learns the cluster key can read
no recorded link (forward secrecy). The hellos, proofs and "ok" are in clear; no command,
event, prompt or token ever is.

Nonces and ephemeral keys come from the caller's `token_hex` (its `Environment`): the
OS's secure source in production, seeded in the simulator.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import trio
from attrs import evolve, frozen
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from trio_websocket import WebSocketConnection

from exo.events.codec import decode, encode
from exo.events.ids import NodeId
from exo.link_cipher import KEY_BYTES, LinkCipher, link_cipher

HANDSHAKE_TIMEOUT = 5.0

# A source of fresh random bytes as hex (`Environment.token_hex`).
TokenHex = Callable[[int], str]


class AuthError(Exception):
    """The peer is not of this cluster: another namespace, or not holding the key."""


@frozen
class Hello:
    namespace: str
    node_id: str
    nonce: str
    peer_port: int
    ephemeral: str = ""  # X25519 public key, hex; empty from an exo without encrypted links
    proof: str = ""  # set by the listener: it answers the dialer's nonce at once


@frozen
class Session:
    """A handshake's outcome: who the peer is, and this end's cipher for the link."""

    peer: NodeId
    cipher: LinkCipher


def cluster_secret(namespace: str, cluster_key: str | None) -> bytes:
    """The HMAC key: the cluster key when given; without one, anyone who knows the
    namespace may join (an open home cluster), which the docs spell out."""
    material = cluster_key if cluster_key is not None else f"exo-open-cluster:{namespace}"
    return hashlib.sha256(material.encode()).digest()


def instance_key(secret: bytes, instance_id: str) -> str:
    """The key an instance's ranks prove to each other at their doorbells (hex): bound to
    the cluster secret, so no host without it can compute one, and to the instance, so
    one instance's runners cannot pass for another's."""
    text = b"exo doorbell key|" + instance_id.encode()
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def transcript(dialer: Hello, listener: Hello) -> bytes:
    """What both proofs and the link's keys are bound to."""
    parts = (dialer.node_id, listener.node_id, dialer.nonce, listener.nonce)
    return "|".join((*parts, dialer.ephemeral, listener.ephemeral)).encode()


def proof(secret: bytes, role: str, dialer: Hello, listener: Hello) -> str:
    text = role.encode() + b"|" + transcript(dialer, listener)
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


@frozen
class LinkAuth:
    """One node's side of the handshake."""

    namespace: str
    node_id: NodeId
    secret: bytes
    peer_port: int

    async def as_dialer(self, ws: WebSocketConnection, token_hex: TokenHex) -> Session:
        """The peer and the link's cipher once both sides proved the key; `AuthError`
        otherwise."""
        key, mine = self._fresh(token_hex)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await ws.send_message(encode(mine).decode())
            theirs = self._check(decode(await ws.get_message(), Hello))
            shared = _exchange(key, theirs)
            if not _same(theirs.proof, proof(self.secret, "listener", mine, theirs)):
                await ws.send_message("wrong cluster key")  # so that its log says why too
                raise AuthError(f"node {theirs.node_id} does not hold our cluster key")
            await ws.send_message(proof(self.secret, "dialer", mine, theirs))
            verdict = await ws.get_message()
        if verdict != "ok":
            raise AuthError(f"node {theirs.node_id} refused us: {verdict}")
        cipher = link_cipher(shared, self.secret, transcript(mine, theirs), dialer=True)
        return Session(NodeId(theirs.node_id), cipher)

    async def as_listener(self, ws: WebSocketConnection, token_hex: TokenHex) -> Session:
        key, unsigned = self._fresh(token_hex)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            theirs = self._check(decode(await ws.get_message(), Hello))
            shared = _exchange(key, theirs)
            mine = evolve(unsigned, proof=proof(self.secret, "listener", theirs, unsigned))
            await ws.send_message(encode(mine).decode())
            answer = await ws.get_message()
            if not _same(answer, proof(self.secret, "dialer", theirs, mine)):
                await ws.send_message("wrong cluster key")
                raise AuthError(f"node {theirs.node_id} does not hold our cluster key")
            await ws.send_message("ok")
        cipher = link_cipher(shared, self.secret, transcript(theirs, mine), dialer=False)
        return Session(NodeId(theirs.node_id), cipher)

    def _fresh(self, token_hex: TokenHex) -> tuple[X25519PrivateKey, Hello]:
        """This handshake's ephemeral key, and this side's hello with its public half."""
        nonce = token_hex(16)
        key = X25519PrivateKey.from_private_bytes(bytes.fromhex(token_hex(KEY_BYTES)))
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        return key, Hello(self.namespace, self.node_id, nonce, self.peer_port, public)

    def _check(self, hello: Hello) -> Hello:
        if hello.namespace != self.namespace:
            raise AuthError(
                f"node {hello.node_id} is in namespace {hello.namespace!r}, "
                f"we are in {self.namespace!r}"
            )
        if hello.node_id == self.node_id:
            raise AuthError("that is this node itself")
        return hello


def _same(claimed: str | bytes, expected: str) -> bool:
    """A proof check in constant time that any claim can reach: `hmac.compare_digest`
    raises `TypeError` for a str with non-ASCII characters, which a peer chooses."""
    if isinstance(claimed, str):
        claimed = claimed.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(claimed, expected.encode())


def _exchange(key: X25519PrivateKey, theirs: Hello) -> bytes:
    """The X25519 shared secret with the peer's ephemeral key."""
    if not theirs.ephemeral:
        raise AuthError(
            f"node {theirs.node_id} offers no ephemeral key: an exo without encrypted links"
        )
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(theirs.ephemeral)))
    except ValueError:  # not 32 bytes of hex, or a low-order point (no shared secret)
        raise AuthError(f"node {theirs.node_id} offers a malformed ephemeral key") from None
