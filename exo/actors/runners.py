"""The runner supervisor: a reconciler that keeps one runner per instance shard placed on
this node (once its weights are here), and stops runners whose instance is gone."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import trio
from attrs import frozen

from exo.actors.command_client import CommandClient
from exo.actors.link_auth import instance_key
from exo.actors.placement import planned_context
from exo.actors.replica import Replica
from exo.actors.runner_handle import DEFAULT_LIMITS, RunnerHandle, ServingLimits
from exo.environment import Environment
from exo.events.commands import ReportRunnerStatus
from exo.events.facts import Instance, RunnerStatus, Shard
from exo.events.ids import InstanceId, ModelId, NodeId
from exo.events.state import State
from exo.models.cards import card_for

log = logging.getLogger("exo.runners")


@frozen
class RunnerPlan:
    start: tuple[tuple[Instance, Shard], ...]
    stop: tuple[InstanceId, ...]


def plan_runners(state: State, node_id: NodeId, running: frozenset[InstanceId]) -> RunnerPlan:
    """Which runners to start and stop so that this node runs exactly its placed shards.

    A runner starts once its weights are reported complete, and stops only when its
    instance (or its shard here) is gone: weights on disk do not vanish, so a download
    status that reads older for a moment (reports reordered on the way) stops nothing.
    """
    placed: dict[InstanceId, tuple[Instance, Shard]] = {}
    for instance in state.instances.values():
        shard = instance.shard_on(node_id)
        if shard is not None:
            placed[instance.instance_id] = (instance, shard)
    start = tuple(
        placed[i]
        for i in sorted(placed)
        if i not in running and _weights_here(state, node_id, placed[i][0])
    )
    stop = tuple(sorted(i for i in running if i not in placed))
    return RunnerPlan(start, stop)


def _weights_here(state: State, node_id: NodeId, instance: Instance) -> bool:
    download = state.download_status(node_id, instance.model)
    return download is not None and download.phase == "complete"


class RunnerSupervisor:
    def __init__(
        self,
        node_id: NodeId,
        env: Environment,
        replica: Replica,
        commands: CommandClient,
        model_dir: Callable[[ModelId], Path],
        secret: bytes,
        limits: ServingLimits = DEFAULT_LIMITS,
    ) -> None:
        self._node_id = node_id
        self._secret = secret  # the cluster secret, which each instance's doorbell key is from
        self._limits = limits
        self._env = env
        self._replica = replica
        self._commands = commands
        self._model_dir = model_dir
        self.handles: dict[InstanceId, RunnerHandle] = {}
        self._scopes: dict[InstanceId, trio.CancelScope] = {}
        self._reported: dict[InstanceId, tuple[RunnerStatus, float]] = {}

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    state = self._replica.state
                    differs = self._reassert(state)
                    plan = plan_runners(state, self._node_id, frozenset(self.handles))
                    for instance_id in plan.stop:
                        log.info("stopping runner for %s", instance_id)
                        self._scopes.pop(instance_id).cancel()
                        del self.handles[instance_id]
                    for instance, shard in plan.start:
                        await nursery.start(self._keep_runner, instance, shard)
                    # While the state is wrong about a runner, look again within a second.
                    with trio.move_on_after(1.0 if differs else math.inf):
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

        card = card_for(instance.model, self._replica.state.models)
        # The runner's sequences and prompt cache share the KV memory placement planned.
        budget = planned_context(card, instance.context_length) if card is not None else None
        handle = RunnerHandle(
            self._env,
            instance,
            shard,
            self._model_dir(instance.model),
            report,
            self._limits,
            budget,
            doorbell_key=instance_key(self._secret, instance_id),
        )
        with trio.CancelScope() as scope:
            self.handles[instance_id] = handle
            self._scopes[instance_id] = scope
            log.info("starting runner for %s (%s)", instance_id, instance.model)
            task_status.started()
            await handle.run()

    def _reassert(self, state: State) -> bool:
        """Report again what the state has wrong about our runners (a new master that
        never heard, a log cut back, reports that arrived out of order), at most once a
        second per runner while the difference lasts."""
        now = self._env.now()
        differs = False
        for instance_id, handle in sorted(self.handles.items()):
            if state.runner_status(instance_id, self._node_id) == handle.status:
                continue
            differs = True
            reported = self._reported.get(instance_id)
            if reported is None or reported[0] != handle.status or now - reported[1] >= 1.0:
                self._report(instance_id, handle.status)
        return differs

    def _report(self, instance_id: InstanceId, status: RunnerStatus) -> None:
        self._reported[instance_id] = (status, self._env.now())
        self._commands.send_nowait(ReportRunnerStatus(instance_id, status))
