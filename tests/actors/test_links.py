import json
import random
from pathlib import Path
from typing import cast

import trio
import trio.testing
from attrs import evolve

from exo.actors.link_auth import Hello, cluster_secret, proof
from exo.actors.links import KEEPALIVE_INTERVAL, LINK_SILENT_LIMIT, PEERS_FILE, LinkNetwork
from exo.environment import Environment, RealEnvironment
from exo.events.ids import NodeId
from simulations.network import LinkModel
from simulations.sockets import SimHostSockets, SimSockets


def network(home: Path, peers: tuple[str, ...] = ()) -> LinkNetwork:
    return LinkNetwork(RealEnvironment(home), NodeId("node-a"), home, "home", "key", 5000, peers)


def test_peers_linked_once_are_dialled_after_a_restart(tmp_path: Path) -> None:
    first = network(tmp_path, ("10.0.0.2:52416",))
    assert first._dial_list() == ["10.0.0.2:52416"]
    first._remember("10.0.0.3:52416")
    first._remember("10.0.0.3:52416")  # known: the file is not rewritten
    assert json.loads((tmp_path / PEERS_FILE).read_text()) == ["10.0.0.3:52416"]
    again = network(tmp_path)  # no --peers this time
    assert again._dial_list() == ["10.0.0.3:52416"]
    assert again.expecting_peers()


def test_a_damaged_peers_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / PEERS_FILE).write_text("{not json")
    assert network(tmp_path)._dial_list() == []
    assert not network(tmp_path).expecting_peers()


def test_proofs_bind_the_key_the_role_and_both_sides() -> None:
    dialer, listener = Hello("home", "a", "n1", 1), Hello("home", "b", "n2", 2)
    secret = cluster_secret("home", "key")
    assert proof(secret, "dialer", dialer, listener) != proof(secret, "listener", dialer, listener)
    assert proof(secret, "dialer", dialer, listener) != proof(
        cluster_secret("home", "other"), "dialer", dialer, listener
    )
    # A man in the middle who swaps either side's ephemeral key breaks the proofs.
    assert proof(secret, "dialer", dialer, listener) != proof(
        secret, "dialer", evolve(dialer, ephemeral="ee" * 32), listener
    )
    assert proof(secret, "listener", dialer, listener) != proof(
        secret, "listener", dialer, evolve(listener, ephemeral="ee" * 32)
    )
    # Without a key the namespace is the secret: another namespace never matches.
    assert cluster_secret("home", None) != cluster_secret("work", None)


class _NetEnv:
    """What `LinkNetwork` uses of an `Environment`, over simulated TCP."""

    def __init__(self, home: Path, sockets: SimHostSockets) -> None:
        self.home = home
        self._sockets = sockets
        self._rng = random.Random(home.name)

    def now(self) -> float:
        return trio.current_time()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def token_hex(self, nbytes: int) -> str:
        return self._rng.getrandbits(8 * nbytes).to_bytes(nbytes, "big").hex()

    async def open_tcp_stream(self, host: str, port: int) -> trio.abc.Stream:
        return await self._sockets.open_tcp_stream(host, port)

    async def open_tcp_listener(self, host: str, port: int) -> trio.abc.Listener[trio.abc.Stream]:
        return await self._sockets.open_tcp_listener(host, port)


def linked_node(
    net: SimSockets, home: Path, address: str, node: str, peers: tuple[str, ...], key: str = "k"
) -> LinkNetwork:
    env = cast(Environment, _NetEnv(home, net.host(address)))
    return LinkNetwork(env, NodeId(node), home, "n", key, 7000, peers)


def test_a_link_replaced_by_a_redial_counts_as_lost(tmp_path: Path) -> None:
    """The dialer's end of a link breaks while the other end hears nothing (a half-open
    connection); the dialer redials and the new link replaces the stale one. Frames
    queued on the stale one are gone, so the data plane must be told the link was lost
    (before, a relayed reply went on missing them)."""

    async def main() -> None:
        net = SimSockets(random.Random(0), LinkModel(), lambda a, b: True, lambda line: None)
        homes = [tmp_path / "a", tmp_path / "b"]
        for home in homes:
            home.mkdir()
        a = linked_node(net, homes[0], "10.0.0.1", "node-a", ())
        b = linked_node(net, homes[1], "10.0.0.2", "node-b", ("10.0.0.1:7000",))
        lost: list[NodeId] = []
        a.on_link_lost = lost.append
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run, "0.0.0.0")
            await nursery.start(b.run, "0.0.0.0")
            await trio.sleep(1)
            assert a.linked() == ["node-b"] and b.linked() == ["node-a"]
            [b_end] = [s for s in net._streams if s.local_host == "10.0.0.2"]
            net.half_open(b_end)
            await trio.sleep(2)  # b redials at once; a still holds the stale link
            assert a.stats.links == 2 and a.linked() == ["node-b"]
            assert lost == ["node-b"]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_half_open_link_is_closed_after_its_silence_and_redialled(tmp_path: Path) -> None:
    """The listener's end breaks and the dialer hears nothing of it: the dialer's link
    goes silent, is closed after LINK_SILENT_LIMIT and redialled."""

    async def main() -> None:
        net = SimSockets(random.Random(0), LinkModel(), lambda a, b: True, lambda line: None)
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        a = linked_node(net, tmp_path / "a", "10.0.0.1", "node-a", ())
        b = linked_node(net, tmp_path / "b", "10.0.0.2", "node-b", ("10.0.0.1:7000",))
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run, "0.0.0.0")
            await nursery.start(b.run, "0.0.0.0")
            await trio.sleep(1)
            [a_end] = [s for s in net._streams if s.local_host == "10.0.0.1"]
            net.half_open(a_end)
            await trio.sleep(2)
            assert a.linked() == [] and b.linked() == ["node-a"]  # b does not know yet
            await trio.sleep(LINK_SILENT_LIMIT + KEEPALIVE_INTERVAL + 2)
            assert b.stats.silent == 1 and b.stats.links == 2
            assert a.linked() == ["node-b"] and b.linked() == ["node-a"]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
