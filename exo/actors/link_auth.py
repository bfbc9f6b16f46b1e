"""The link handshake: a mutual challenge-response on the cluster key.

Both sides send a random nonce, and each proves it holds the key with an HMAC over both
nonces, both node ids and its role; the key itself never crosses the wire. The dialer
speaks first; the listener answers the dialer's nonce in its own hello at once.
"""

from __future__ import annotations

import hashlib
import hmac

import trio
from attrs import frozen
from trio_websocket import WebSocketConnection

from exo.events.codec import decode, encode
from exo.events.ids import NodeId

HANDSHAKE_TIMEOUT = 5.0


class AuthError(Exception):
    """The peer is not of this cluster: another namespace, or not holding the key."""


@frozen
class Hello:
    namespace: str
    node_id: str
    nonce: str
    peer_port: int
    proof: str = ""  # set by the listener: it answers the dialer's nonce at once


def cluster_secret(namespace: str, cluster_key: str | None) -> bytes:
    """The HMAC key: the cluster key when given; without one, anyone who knows the
    namespace may join (an open home cluster), which the docs spell out."""
    material = cluster_key if cluster_key is not None else f"exo-open-cluster:{namespace}"
    return hashlib.sha256(material.encode()).digest()


def proof(secret: bytes, role: str, dialer: Hello, listener: Hello) -> str:
    text = "|".join((role, dialer.node_id, listener.node_id, dialer.nonce, listener.nonce))
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


@frozen
class LinkAuth:
    """One node's side of the handshake; the nonces come from the caller (its
    `Environment`), so the simulator's are seeded."""

    namespace: str
    node_id: NodeId
    secret: bytes
    peer_port: int

    def _hello(self, nonce: str, proof_text: str = "") -> Hello:
        return Hello(self.namespace, self.node_id, nonce, self.peer_port, proof_text)

    async def as_dialer(self, ws: WebSocketConnection, nonce: str) -> NodeId:
        """The peer's id once both sides proved the key; `AuthError` otherwise."""
        mine = self._hello(nonce)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await ws.send_message(encode(mine).decode())
            theirs = self._check(decode(await ws.get_message(), Hello))
            if not hmac.compare_digest(theirs.proof, proof(self.secret, "listener", mine, theirs)):
                await ws.send_message("wrong cluster key")  # so that its log says why too
                raise AuthError(f"node {theirs.node_id} does not hold our cluster key")
            await ws.send_message(proof(self.secret, "dialer", mine, theirs))
            verdict = await ws.get_message()
        if verdict != "ok":
            raise AuthError(f"node {theirs.node_id} refused us: {verdict}")
        return NodeId(theirs.node_id)

    async def as_listener(self, ws: WebSocketConnection, nonce: str) -> NodeId:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            theirs = self._check(decode(await ws.get_message(), Hello))
            mine = self._hello(nonce, proof(self.secret, "listener", theirs, self._hello(nonce)))
            await ws.send_message(encode(mine).decode())
            answer = await ws.get_message()
            if not hmac.compare_digest(str(answer), proof(self.secret, "dialer", theirs, mine)):
                await ws.send_message("wrong cluster key")
                raise AuthError(f"node {theirs.node_id} does not hold our cluster key")
            await ws.send_message("ok")
        return NodeId(theirs.node_id)

    def _check(self, hello: Hello) -> Hello:
        if hello.namespace != self.namespace:
            raise AuthError(
                f"node {hello.node_id} is in namespace {hello.namespace!r}, "
                f"we are in {self.namespace!r}"
            )
        if hello.node_id == self.node_id:
            raise AuthError("that is this node itself")
        return hello
