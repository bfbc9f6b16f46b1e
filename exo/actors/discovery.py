"""Zero-configuration discovery: UDP multicast beacons on every usable IPv4 interface.

A beacon says "node N of namespace S takes peer links on port P" and carries an HMAC of
those fields under the cluster secret, so nodes without the key are not even dialled.
(A recorded beacon can be replayed, but all it can do is make nodes dial the real
node's peer port, where the link handshake authenticates both sides.) A node that hears
a valid beacon from a lower id than its own leaves the dialling to that node; the lower
id dials, so each pair gets one link.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable

import trio
from attrs import frozen

from exo.environment import Environment, Multicast
from exo.events.ids import NodeId

log = logging.getLogger("exo.discovery")

GROUP = "239.255.77.76"
DEFAULT_PORT = 52417
INTERVAL = 1.0
MAX_BEACON = 1024


@frozen
class Beacon:
    namespace: str
    node_id: str
    peer_port: int
    proof: str


def beacon_proof(secret: bytes, namespace: str, node_id: str, peer_port: int) -> str:
    text = f"beacon|{namespace}|{node_id}|{peer_port}"
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def encode_beacon(beacon: Beacon) -> bytes:
    return json.dumps(
        {
            "ns": beacon.namespace,
            "id": beacon.node_id,
            "port": beacon.peer_port,
            "proof": beacon.proof,
        },
        separators=(",", ":"),
    ).encode()


def decode_beacon(data: bytes) -> Beacon | None:
    """A beacon, or None for anything else (other software shares multicast groups).

    Nesting past the recursion limit, a port of 1e999 and a proof that is not ASCII (which
    `hmac.compare_digest` refuses with `TypeError`) are junk too, not a reason to stop
    listening."""
    try:
        raw = json.loads(data)
        beacon = Beacon(str(raw["ns"]), str(raw["id"]), int(raw["port"]), str(raw["proof"]))
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None
    return beacon if 0 < beacon.peer_port < 65536 and beacon.proof.isascii() else None


class Discovery:
    def __init__(
        self,
        env: Environment,
        node_id: NodeId,
        namespace: str,
        secret: bytes,
        peer_port: int,
        port: int,
        found: Callable[[str], None],
    ) -> None:
        self._env = env
        self._node_id = node_id
        self._namespace = namespace
        self._secret = secret
        self._peer_port = peer_port
        self._port = port
        self._found = found
        self._seen: set[str] = set()
        self._beacon = encode_beacon(
            Beacon(
                namespace, node_id, peer_port, beacon_proof(secret, namespace, node_id, peer_port)
            )
        )

    async def run(self) -> None:
        """Announce and listen; a network without multicast only delays discovery (it is
        retried every 30 s), it never stops the node."""
        while True:
            try:
                await self._run_once()
            except* OSError as failed:  # from the receiver or from the beacon task
                reason = failed.exceptions[0]
                log.warning("multicast discovery unavailable (%s); retrying in 30 s", reason)
            await self._env.sleep(30)

    async def _run_once(self) -> None:
        group = await self._env.open_multicast(GROUP, self._port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_beacons, group)
                while True:
                    data, host = await group.receive(MAX_BEACON)
                    self._on_beacon(data, host)
        finally:
            group.close()

    async def _send_beacons(self, group: Multicast) -> None:
        while True:
            await group.send(self._beacon)
            await self._env.sleep(INTERVAL)

    def _on_beacon(self, data: bytes, host: str) -> None:
        beacon = decode_beacon(data)
        if beacon is None or beacon.node_id == self._node_id:
            return
        if beacon.namespace != self._namespace:
            return  # another cluster on the same network: not ours, not an error
        expected = beacon_proof(self._secret, beacon.namespace, beacon.node_id, beacon.peer_port)
        address = f"{host}:{beacon.peer_port}"
        if not hmac.compare_digest(beacon.proof, expected):
            if address not in self._seen:
                self._seen.add(address)
                log.warning(
                    "node %s at %s announces namespace %r without our cluster key; ignoring it",
                    beacon.node_id,
                    host,
                    beacon.namespace,
                )
            return
        if self._node_id < beacon.node_id and address not in self._seen:
            self._seen.add(address)
            log.info("discovered node %s at %s", beacon.node_id, address)
            self._found(address)
