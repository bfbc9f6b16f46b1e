from pathlib import Path

from exo.actors.discovery import (
    Beacon,
    Discovery,
    beacon_proof,
    decode_beacon,
    encode_beacon,
)
from exo.actors.link_auth import cluster_secret
from exo.environment import RealEnvironment
from exo.events.ids import NodeId

SECRET = cluster_secret("home", "key")


def beacon(node_id: str, namespace: str = "home", secret: bytes = SECRET) -> bytes:
    proof = beacon_proof(secret, namespace, node_id, 5000)
    return encode_beacon(Beacon(namespace, node_id, 5000, proof))


def test_beacons_round_trip_and_junk_is_ignored() -> None:
    raw = beacon("node-b")
    decoded = decode_beacon(raw)
    assert decoded is not None and decoded.node_id == "node-b"
    for junk in (b"", b"\xff", b"[]", b'{"ns": "x"}', b'{"ns":"a","id":"b","port":0,"proof":""}'):
        assert decode_beacon(junk) is None


def test_only_valid_beacons_from_higher_ids_are_dialled() -> None:
    dialled: list[str] = []
    me = Discovery(
        RealEnvironment(Path(".")), NodeId("node-m"), "home", SECRET, 6000, 52417, dialled.append
    )
    me._on_beacon(beacon("node-z"), "10.0.0.2")  # higher id: we dial
    me._on_beacon(beacon("node-z"), "10.0.0.2")  # once
    me._on_beacon(beacon("node-a"), "10.0.0.3")  # lower id: it dials us
    me._on_beacon(beacon("node-m"), "10.0.0.4")  # ourselves
    me._on_beacon(beacon("node-y", namespace="other"), "10.0.0.5")  # another cluster
    me._on_beacon(beacon("node-x", secret=cluster_secret("home", "wrong")), "10.0.0.6")
    assert dialled == ["10.0.0.2:5000"]


def test_hostile_beacons_are_junk_not_a_crash() -> None:
    """Found by fuzzing: each of these escaped `decode_beacon` or `_on_beacon` and would
    have ended discovery (only `OSError` restarts it)."""
    deep = b"[" * 5000 + b"]" * 5000
    huge_port = b'{"ns":"home","id":"node-z","port":1e999,"proof":""}'
    not_ascii = b'{"ns":"home","id":"node-z","port":5000,"proof":"\\u00e9"}'
    for junk in (deep, huge_port, not_ascii):
        assert decode_beacon(junk) is None
    dialled: list[str] = []
    me = Discovery(
        RealEnvironment(Path(".")), NodeId("node-m"), "home", SECRET, 6000, 52417, dialled.append
    )
    for junk in (deep, huge_port, not_ascii):
        me._on_beacon(junk, "10.0.0.9")
    me._on_beacon(beacon("node-z"), "10.0.0.2")
    assert dialled == ["10.0.0.2:5000"]
