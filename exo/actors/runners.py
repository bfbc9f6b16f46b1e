"""The runner supervisor: a reconciler that keeps one runner per instance shard placed on
this node (once its weights are here), and stops runners whose instance is gone."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio
from attrs import frozen

from exo.actors.command_client import CommandClient
from exo.actors.environment import Environment
from exo.actors.replica import Replica
from exo.actors.runner_handle import RunnerHandle
from exo.events.commands import ReportRunnerStatus
from exo.events.facts import Instance, RunnerStatus, Shard
from exo.events.ids import InstanceId, ModelId, NodeId
from exo.events.state import State

log = logging.getLogger("exo.runners")


@frozen
class RunnerPlan:
    start: tuple[tuple[Instance, Shard], ...]
    stop: tuple[InstanceId, ...]


def plan_runners(state: State, node_id: NodeId, running: frozenset[InstanceId]) -> RunnerPlan:
    """Which runners to start and stop so that this node runs exactly its placed shards."""
    wanted: dict[InstanceId, tuple[Instance, Shard]] = {}
    for instance in state.instances.values():
        shard = instance.shard_on(node_id)
        download = state.download_status(node_id, instance.model)
        if shard is not None and download is not None and download.phase == "complete":
            wanted[instance.instance_id] = (instance, shard)
    start = tuple(wanted[i] for i in sorted(wanted) if i not in running)
    stop = tuple(sorted(i for i in running if i not in wanted))
    return RunnerPlan(start, stop)


class RunnerSupervisor:
    def __init__(
        self,
        node_id: NodeId,
        env: Environment,
        replica: Replica,
        commands: CommandClient,
        model_dir: Callable[[ModelId], Path],
    ) -> None:
        self._node_id = node_id
        self._env = env
        self._replica = replica
        self._commands = commands
        self._model_dir = model_dir
        self.handles: dict[InstanceId, RunnerHandle] = {}
        self._scopes: dict[InstanceId, trio.CancelScope] = {}

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                asserted: tuple[object, ...] = ()
                while True:
                    state = self._replica.state
                    # A new master, or a log cut back, may lack what our runners are.
                    era = (state.term, state.master, self._replica.resets)
                    if era != asserted:
                        self._reassert(state)
                        asserted = era
                    plan = plan_runners(state, self._node_id, frozenset(self.handles))
                    for instance_id in plan.stop:
                        log.info("stopping runner for %s", instance_id)
                        self._scopes.pop(instance_id).cancel()
                        del self.handles[instance_id]
                    for instance, shard in plan.start:
                        await nursery.start(self._keep_runner, instance, shard)
                    await self._replica.wait_changed()
        finally:
            self.handles.clear()
            self._scopes.clear()

    async def _keep_runner(
        self, instance: Instance, shard: Shard, *, task_status: trio.TaskStatus[None]
    ) -> None:
        instance_id = instance.instance_id

        def report(status: RunnerStatus) -> None:
            self._report(instance_id, status)

        handle = RunnerHandle(self._env, instance, shard, self._model_dir(instance.model), report)
        with trio.CancelScope() as scope:
            self.handles[instance_id] = handle
            self._scopes[instance_id] = scope
            log.info("starting runner for %s (%s)", instance_id, instance.model)
            task_status.started()
            await handle.run()

    def _reassert(self, state: State) -> None:
        for instance_id, handle in sorted(self.handles.items()):
            if state.runner_status(instance_id, self._node_id) != handle.status:
                self._report(instance_id, handle.status)

    def _report(self, instance_id: InstanceId, status: RunnerStatus) -> None:
        self._commands.send_nowait(ReportRunnerStatus(instance_id, status))
