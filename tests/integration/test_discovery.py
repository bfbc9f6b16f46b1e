"""Three nodes in three network namespaces on a bridge find each other by multicast
discovery alone (no --peers) and form one cluster; a node of another namespace on the
same wire stays out."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.netns import bridged_namespaces, can_make_namespaces
from tests.integration.nodes import NodeProcess, agreement, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not can_make_namespaces(), reason="needs root and iproute2"),
]


def test_three_hosts_discover_each_other_without_peers(tmp_path: Path, models_dir: Path) -> None:
    with bridged_namespaces(4) as hosts:
        nodes = [
            NodeProcess(
                tmp_path / f"n{i}",
                models_dir,
                "--cluster-key",
                "k",
                "--preload",
                "",
                discovery=True,
                netns=namespace,
            )
            for i, (namespace, _) in enumerate(hosts[:3])
        ]
        stranger = NodeProcess(
            tmp_path / "stranger",
            models_dir,
            "--namespace",
            "other",
            "--preload",
            "",
            discovery=True,
            netns=hosts[3][0],
        )
        try:
            for node in [*nodes, stranger]:
                node.start()
            state = wait_for(lambda: agreement(nodes, 3), 40, "three discovered nodes agree")
            assert stranger.state()["node_id"] not in state["state"]["nodes"]
            assert "discovered node" in nodes[0].log_text() + nodes[1].log_text()
            alone = wait_for(lambda: stranger.state()["state"]["nodes"] or None, 20, "stranger")
            assert list(alone) == [stranger.state()["node_id"]]
        finally:
            for node in [*nodes, stranger]:
                node.stop(signal.SIGKILL)
