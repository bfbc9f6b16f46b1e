"""Simulated clients: chat requests, instance placements and deletions sent to nodes at
the scenario's times, each bounded. A request is answered or failed, never left hanging:
a node crash fails the requests in flight against it, as a dropped connection would."""

from __future__ import annotations

import trio
from attrs import frozen

from exo.actors.api_host import serving_instance
from exo.actors.decide import instance_id_for
from exo.api.backend import BackendError
from exo.engine.protocol import ChatMessage, Finished, GenerateRequest, SamplingParams
from exo.events.commands import DeleteInstance, PlaceInstance
from exo.events.ids import InstanceId
from exo.models.cards import BUNDLED_MODEL
from simulations.cluster import Cluster, SimNode
from simulations.engine import fake_tokens
from simulations.scenario import Op

# Longer than any wait the node itself bounds (ready timeout 20 s, a failover, retries).
OP_BOUND = 60.0


@frozen
class OpResult:
    op: Op
    outcome: str  # ok, failed, refused, hung
    detail: str


class Workload:
    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self.results: list[OpResult] = []
        # Decisions the cluster acknowledged to a client: they must survive everything.
        self.acked_created: list[InstanceId] = []
        self.acked_deleted: list[InstanceId] = []

    async def run(self, ops: tuple[Op, ...]) -> None:
        async with trio.open_nursery() as nursery:
            for number, op in enumerate(ops):
                await trio.sleep(max(0.0, op.at - trio.current_time()))
                nursery.start_soon(self._run_op, number, op)

    async def _run_op(self, number: int, op: Op) -> None:
        node = self._cluster.nodes[op.node]
        if not node.up:
            self.results.append(OpResult(op, "refused", "node down"))
            return
        result: OpResult | None = None
        with trio.CancelScope() as scope:
            node.clients.add(scope)
            try:
                with trio.move_on_after(OP_BOUND):
                    result = await self._attempt(number, op, node)
            finally:
                node.clients.discard(scope)
        if scope.cancelled_caught:
            result = OpResult(op, "failed", "node crashed")
        elif result is None:
            result = OpResult(op, "hung", f"no answer within {OP_BOUND:g} s")
        self.results.append(result)

    async def _attempt(self, number: int, op: Op, node: SimNode) -> OpResult:
        running = node.running
        assert running is not None
        match op.kind:
            case "place":
                return await self._place(op, node)
            case "delete":
                instances = sorted(running.replica.state.instances)
                if not instances:
                    return OpResult(op, "refused", "no instance to delete")
                target = instances[number % len(instances)]
                outcome = await running.commands.call(DeleteInstance(target))
                if outcome.accepted:
                    self.acked_deleted.append(target)
                    return OpResult(op, "ok", f"deleted {target}")
                return OpResult(op, "failed", outcome.reason)
            case "chat":
                state = running.replica.state
                if serving_instance(state, node.node_id, BUNDLED_MODEL) is None:
                    placed = await self._place(op, node)
                    if placed.outcome != "ok":
                        return placed
                return await self._chat(number, op, node)

    async def _place(self, op: Op, node: SimNode) -> OpResult:
        running = node.running
        assert running is not None
        outcome = await running.commands.call(PlaceInstance(BUNDLED_MODEL, nodes=(node.node_id,)))
        if not outcome.accepted:
            return OpResult(op, "failed", outcome.reason)
        instance_id = instance_id_for(outcome.command_id)
        self.acked_created.append(instance_id)
        return OpResult(op, "ok", f"placed {instance_id}")

    async def _chat(self, number: int, op: Op, node: SimNode) -> OpResult:
        running = node.running
        assert running is not None
        messages = (ChatMessage("user", f"request {number} to {node.node_id}"),)
        params = SamplingParams(temperature=0.0, max_tokens=8)
        expected = "".join(text for _, text in fake_tokens(GenerateRequest("", messages, params)))
        text: list[str] = []
        try:
            async with running.backend.generate(BUNDLED_MODEL, messages, params) as chunks:
                async for chunk in chunks:
                    if not isinstance(chunk, Finished):
                        text.append(chunk.text)
        except BackendError as exc:
            return OpResult(op, "failed", exc.message.splitlines()[0])
        answer = "".join(text)
        if answer != expected:
            return OpResult(op, "wrong", f"got {answer!r}, expected {expected!r}")
        return OpResult(op, "ok", answer)
