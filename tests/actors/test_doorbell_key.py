"""The node's half of the doorbell guard: each instance's key, derived from the cluster
secret, reaches its runner in `Load` over the stdin pipe, and nowhere else."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from exo.actors.link_auth import cluster_secret, instance_key
from exo.actors.runner_handle import RunnerHandle
from exo.engine import protocol
from exo.environment import RealEnvironment
from exo.events.codec import decode
from exo.events.facts import Instance, Shard
from exo.events.ids import InstanceId, ModelId, NodeId

SECRET = cluster_secret("home", "key")


def test_each_instance_and_cluster_has_its_own_key() -> None:
    key = instance_key(SECRET, "i1")
    assert len(bytes.fromhex(key)) == 32
    assert key == instance_key(SECRET, "i1")
    assert key != instance_key(SECRET, "i2")
    assert key != instance_key(cluster_secret("home", "other key"), "i1")


class _CatRunner(RealEnvironment):
    """Spawns, instead of a runner, a process that keeps its first stdin line."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.first_line = home / "stdin"

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> trio.Process:
        script = (
            f"import sys; open({str(self.first_line)!r}, 'wb').write(sys.stdin.buffer.readline())"
        )
        return await super().spawn([sys.executable, "-c", script], env)


async def test_the_runner_gets_its_instances_key_in_load(tmp_path: Path) -> None:
    env = _CatRunner(tmp_path)
    shard = Shard(NodeId("n"), 1, 0, 2)
    instance = Instance(InstanceId("i1"), ModelId("m"), "pipeline", (shard,))
    key = instance_key(SECRET, "i1")
    handle = RunnerHandle(env, instance, shard, tmp_path, lambda _: None, doorbell_key=key)
    with trio.fail_after(10):
        await handle._run_once()
    load = decode(env.first_line.read_bytes(), protocol.ToRunner)
    assert isinstance(load, protocol.Load) and load.doorbell_key == key
