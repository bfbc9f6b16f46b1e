"""Simulated clients: chat requests, instance placements and deletions sent to nodes at
the scenario's times, each bounded. A request is answered or failed, never left hanging:
a node crash fails the requests in flight against it, as a dropped connection would.

On seeds over links two more: `relay` places an instance on the op's node and chats
through a node without one of its own, so the answer comes through the data plane;
`pipeline` places an instance across the op's node and the next one or two up, and
streams a chat from its rank 0, every token a pass through the other ranks' runners."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager

import httpcore
import trio
from attrs import frozen

from exo.actors.api_host import serving_instance
from exo.actors.decide import instance_id_for
from exo.actors.runner_handle import RunnerHandle
from exo.api.backend import BackendError, Chunk
from exo.engine.protocol import ChatMessage, Finished, GenerateRequest, SamplingParams
from exo.events.commands import DeleteInstance, PlaceInstance
from exo.events.ids import InstanceId, NodeId
from exo.models.cards import BUNDLED_MODEL
from exo.node import RunningNode
from simulations.cluster import Cluster, SimNode
from simulations.engine import fake_tokens
from simulations.http import (
    CLIENT_ADDRESS,
    ChatFailed,
    SimNetworkBackend,
    Truncated,
    api_key,
    dialect_of,
)
from simulations.http import chat as http_chat
from simulations.scenario import Op

# Longer than any wait the node itself bounds (ready timeout 20 s, a failover, retries).
OP_BOUND = 60.0
# How long a pipeline op waits for its rank 0 to be ready (downloads, the ring forming).
READY_BOUND = 30.0
CHAT_PARAMS = SamplingParams(temperature=0.0, max_tokens=8)
# Connections the simulated client host may hold open at once, to all nodes together.
MAX_CONNECTIONS = 64


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
        # Over links, chats go through the nodes' HTTP APIs, from one client host.
        self._http: httpcore.AsyncConnectionPool | None = None
        if cluster.sockets is not None:
            backend = SimNetworkBackend(cluster.sockets.host(CLIENT_ADDRESS))
            self._http = httpcore.AsyncConnectionPool(
                max_connections=MAX_CONNECTIONS, network_backend=backend
            )

    async def run(self, ops: tuple[Op, ...]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for number, op in enumerate(ops):
                    await trio.sleep(max(0.0, op.at - trio.current_time()))
                    nursery.start_soon(self._run_op, number, op)
        finally:
            if self._http is not None:
                with trio.CancelScope(shield=True):
                    await self._http.aclose()

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
            case "relay":
                return await self._relay(number, op, node)
            case "pipeline":
                return await self._pipeline(number, op, node)

    async def _relay(self, number: int, op: Op, node: SimNode) -> OpResult:
        running = node.running
        assert running is not None
        state = running.replica.state
        if serving_instance(state, node.node_id, BUNDLED_MODEL) is None:
            placed = await self._place(op, node)
            if placed.outcome != "ok":
                return placed
        others = [n for n in self._cluster.nodes if n is not node and n.running is not None]
        api = [n for n in others if serving_instance(state, n.node_id, BUNDLED_MODEL) is None]
        candidates = api or others
        if not candidates:
            return OpResult(op, "refused", "no other node up")
        return await self._chat(number, op, candidates[number % len(candidates)])

    async def _pipeline(self, number: int, op: Op, node: SimNode) -> OpResult:
        running = node.running
        assert running is not None
        nodes = self._cluster.nodes
        up = [nodes[(node.index + k) % len(nodes)] for k in range(1, len(nodes))]
        ranks = [node, *[n for n in up if n.running is not None][: 1 + number % 2]]
        if len(ranks) < 2:
            return OpResult(op, "refused", "no other node up")
        ids = tuple(n.node_id for n in ranks)
        placed = await self._place(op, node, ids)
        if placed.outcome != "ok":
            return placed
        instance_id = InstanceId(placed.detail.removeprefix("placed "))
        handle = await _ready_handle(running, instance_id)
        if handle is None:
            return OpResult(op, "failed", f"{len(ranks)}-node instance not ready")
        messages = (ChatMessage("user", f"request {number} to {len(ranks)} nodes"),)
        request = GenerateRequest(f"sim-{number}", messages, CHAT_PARAMS)
        answer = _backend_answer(handle.stream(request))
        return await _judged(op, request, answer, f"{len(ranks)} nodes: {instance_id}: ")

    async def _place(
        self, op: Op, node: SimNode, nodes: tuple[NodeId, ...] | None = None
    ) -> OpResult:
        running = node.running
        assert running is not None
        command = PlaceInstance(BUNDLED_MODEL, nodes=nodes or (node.node_id,))
        outcome = await running.commands.call(command)
        if not outcome.accepted:
            return OpResult(op, "failed", outcome.reason)
        instance_id = instance_id_for(outcome.command_id)
        self.acked_created.append(instance_id)
        return OpResult(op, "ok", f"placed {instance_id}")

    async def _chat(self, number: int, op: Op, node: SimNode) -> OpResult:
        """A chat sent to `node`: through its HTTP API in the `number`th dialect over
        links, straight to its backend on the message network (which has no sockets)."""
        running = node.running
        assert running is not None
        text = f"request {number} to {node.node_id}"
        request = GenerateRequest("", (ChatMessage("user", text),), CHAT_PARAMS)
        if self._http is None:
            stream = running.backend.generate(BUNDLED_MODEL, request.messages, CHAT_PARAMS)
            return await _judged(op, request, _backend_answer(stream))
        dialect = dialect_of(number)
        max_tokens = CHAT_PARAMS.max_tokens or 1
        key = api_key(self._cluster.scenario.seed)
        answer = http_chat(self._http, node.address, key, dialect, text, max_tokens)
        return await _judged(op, request, answer, f"{dialect.name}: ")


async def _judged(
    op: Op, request: GenerateRequest, answer: Awaitable[str], label: str = ""
) -> OpResult:
    """Judge a chat's answer against the fake engine's reply to `request`: right (ok),
    wrong (another text, or a stream cut short without an error), or failed with the
    error a client was given."""
    expected = "".join(text for _, text in fake_tokens(request))
    try:
        got = await answer
    except ChatFailed as exc:
        return OpResult(op, "failed", label + (str(exc).splitlines() or [""])[0])
    except Truncated as exc:
        return OpResult(op, "wrong", f"{label}stream cut short: {exc}")
    if got != expected:
        return OpResult(op, "wrong", f"{label}got {got!r}, expected {expected!r}")
    return OpResult(op, "ok", label + got)


async def _backend_answer(stream: AbstractAsyncContextManager[AsyncIterator[Chunk]]) -> str:
    """The text of a backend's stream; ChatFailed with the backend's error."""
    try:
        async with stream as chunks:
            return "".join([c.text async for c in chunks if not isinstance(c, Finished)])
    except BackendError as exc:
        raise ChatFailed(exc.message) from exc


async def _ready_handle(running: RunningNode, instance_id: InstanceId) -> RunnerHandle | None:
    """The instance's runner on this node once ready (polled: a runner sets no event),
    or None after `READY_BOUND`."""
    with trio.move_on_after(READY_BOUND):
        while True:
            handle = running.runners.handles.get(instance_id)
            if handle is not None and handle.ready:
                return handle
            await trio.sleep(0.25)
    return None
