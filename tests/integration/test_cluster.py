"""Real `exo node` processes on 127.0.0.1 forming one cluster over authenticated peer
links: agreement, failover after SIGKILL of the master, identity across restarts, and a
node with the wrong key kept out."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nodes import NodeProcess, agreement, start_cluster, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path, models_dir: Path) -> Iterator[list[NodeProcess]]:
    nodes = start_cluster(tmp_path, models_dir, 3)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop(signal.SIGKILL)


def test_three_nodes_agree_fail_over_and_keep_their_ids(cluster: list[NodeProcess]) -> None:
    first = wait_for(lambda: agreement(cluster, 3), 30, "three nodes in agreement")

    def measured() -> dict[str, Any] | None:
        state = agreement(cluster, 3)
        links = state["state"]["links"] if state else {}
        pairs = [(a, b) for a, per_peer in links.items() for b in per_peer]
        with_bandwidth = [s for per in links.values() for s in per.values() if s["bandwidth_bps"]]
        return state if len(pairs) == 6 and len(with_bandwidth) == 6 else None

    # Every ordered pair's latency and throughput estimate land in the replicated state.
    first = wait_for(measured, 30, "link measurements for every pair")
    for per_peer in first["state"]["links"].values():
        for stats in per_peer.values():
            assert 0 < stats["latency_us"] < 1_000_000
            assert stats["bandwidth_bps"] > 1_000_000  # loopback: far above 1 Mbit/s
    # Previews see all three nodes: SmolLM2's 9 heads rule tensor parallelism out, with why.
    previews = cluster[0].get("/instances/previews?model=smollm2-135m")
    by_kind = {(p["strategy"], p["node_count"]): p for p in previews}
    assert by_kind[("tensor", 2)]["valid"] is False
    assert by_kind[("tensor", 2)]["reason"] == "9 attention heads do not divide by 2 nodes"
    assert by_kind[("pipeline", 3)]["valid"] is True
    assert [s["rank"] for s in by_kind[("pipeline", 3)]["shards"]] == [0, 1, 2]
    master = next(n for n in cluster if n.state()["node_id"] == first["master"])
    master_id = first["master"]
    assert master.process is not None
    master.process.kill()  # SIGKILL: no goodbye
    killed_at = time.monotonic()
    others = [n for n in cluster if n is not master]

    def new_master() -> dict[str, Any] | None:
        states = [n.state() for n in others]
        views = {(s["master"], s["term"]) for s in states}
        if len(views) == 1 and states[0]["master"] != master_id:
            return states[0]
        return None

    after = wait_for(new_master, 10, "a new master agreed by the other two")
    failover = time.monotonic() - killed_at
    assert after["term"] > first["term"]
    assert after["master"] in {n.state()["node_id"] for n in others}
    print(f"failover in {failover:.2f} s")

    master.process.wait(10)
    master.start()  # same home and ports
    assert master.state()["node_id"] == master_id
    again = wait_for(lambda: agreement(cluster, 3), 30, "agreement after the restart")
    assert master_id in again["state"]["nodes"]


def test_a_node_with_the_wrong_key_is_refused(tmp_path: Path, models_dir: Path) -> None:
    [good] = start_cluster(tmp_path / "good", models_dir, 1)
    intruder = NodeProcess(
        tmp_path / "intruder",
        models_dir,
        "--peers",
        f"127.0.0.1:{good.peer_port}",
        "--peer-host",
        "127.0.0.1",
        "--cluster-key",
        "wrong",
        "--preload",
        "",
    )
    intruder.start()
    try:
        wait_for(lambda: "does not hold our cluster key" in good.log_text() or None, 15, "refusal")
        wait_for(lambda: "refused" in intruder.log_text() or None, 15, "intruder told")
        # Each goes on alone: its own master, knowing only itself.
        for node in (good, intruder):
            alone = wait_for(lambda n=node: n.state()["state"]["nodes"] or None, 15, "registered")
            assert list(alone) == [node.state()["node_id"]]
        assert good.state()["master"] != intruder.state()["master"]
    finally:
        intruder.stop(signal.SIGKILL)
        good.stop(signal.SIGKILL)


def test_a_coordinator_only_node_is_never_placed_on_but_relays_chat(
    tmp_path: Path, models_dir: Path
) -> None:
    nodes = start_cluster(tmp_path, models_dir, 2)
    coordinator = nodes[1]
    coordinator.stop(signal.SIGKILL)
    coordinator.extra = (*coordinator.extra, "--no-worker")
    coordinator.start()
    try:
        state = wait_for(lambda: agreement(nodes, 2), 30, "two nodes in agreement")
        me = coordinator.state()["node_id"]
        assert state["state"]["nodes"][me]["worker"] is False
        # A chat sent to it is placed on the worker and its tokens relayed back.
        request = urllib.request.Request(
            coordinator.url + "/v1/chat/completions",
            data=json.dumps(
                {
                    "model": "smollm2-135m",
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    "temperature": 0,
                    "max_tokens": 16,
                }
            ).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=240) as response:
            answer = json.loads(response.read())
        assert "Paris" in answer["choices"][0]["message"]["content"]
        worker = nodes[0].state()["node_id"]
        (instance,) = coordinator.get("/instances")["instances"]
        assert [s["node_id"] for s in instance["shards"]] == [worker]
    finally:
        for node in nodes:
            node.stop(signal.SIGKILL)


def test_nodes_given_one_seed_form_a_full_mesh_and_fail_over_to_one_master(
    tmp_path: Path, models_dir: Path
) -> None:
    """Three nodes started as a user does where multicast is blocked: B and C know only A
    (`--peers A`). They learn each other's address from the replicated state and link, so
    when A is killed one of them leads and the other follows it (before, each elected
    itself: two masters)."""
    seed = NodeProcess(tmp_path / "a", models_dir)
    others = [NodeProcess(tmp_path / name, models_dir) for name in ("b", "c")]
    common = ("--peer-host", "127.0.0.1", "--cluster-key", "k", "--preload", "")
    seed.extra = common
    for node in others:
        node.extra = ("--peers", f"127.0.0.1:{seed.peer_port}", *common)
    nodes = [seed, *others]
    try:
        for node in nodes:
            node.start()

        def meshed() -> dict[str, Any] | None:
            state = agreement(nodes, 3)
            links = state["state"]["links"] if state else {}
            pairs = {(a, b) for a, per_peer in links.items() for b in per_peer}
            return state if len(pairs) == 6 else None

        first = wait_for(meshed, 45, "links between every pair, from one seed")
        b_id, c_id = (n.state()["node_id"] for n in others)
        assert c_id in first["state"]["links"][b_id] and b_id in first["state"]["links"][c_id]
        master = next(n for n in nodes if n.state()["node_id"] == first["master"])
        assert master.process is not None
        master.process.kill()
        survivors = [n for n in nodes if n is not master]

        def one_master() -> dict[str, Any] | None:
            states = [n.state() for n in survivors]
            views = {(s["master"], s["term"]) for s in states}
            if len(views) == 1 and states[0]["master"] != first["master"]:
                return states[0]
            return None

        after = wait_for(one_master, 15, "one new master both survivors follow")
        assert after["master"] in {n.state()["node_id"] for n in survivors}
        time.sleep(3)  # and it stays one: no second election on the other side
        assert len({(n.state()["master"], n.state()["term"]) for n in survivors}) == 1
    finally:
        for node in nodes:
            node.stop(signal.SIGKILL)
