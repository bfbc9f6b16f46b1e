import json
from pathlib import Path

from exo.actors.links import PEERS_FILE, Hello, LinkNetwork, cluster_secret, proof
from exo.environment import RealEnvironment
from exo.events.ids import NodeId


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
    # Without a key the namespace is the secret: another namespace never matches.
    assert cluster_secret("home", None) != cluster_secret("work", None)
