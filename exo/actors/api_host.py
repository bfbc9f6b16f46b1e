"""The node's side of the HTTP API: finds (or places) an instance for a model, waits until
its runner is ready, streams the request through it, and reports the request's lifecycle."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from exo.actors.command_client import CommandClient
from exo.actors.instances_host import InstanceManager
from exo.actors.replica import Replica
from exo.actors.runner_handle import RunnerHandle
from exo.actors.runners import RunnerSupervisor
from exo.api.backend import BackendError, Chunk, Unavailable, UnknownModel
from exo.engine.protocol import ChatMessage, Finished, GenerateRequest, SamplingParams
from exo.events.codec import to_plain
from exo.events.commands import FailRequest, FinishRequest, PlaceInstance, StartRequest
from exo.events.facts import Instance
from exo.events.ids import ModelId, NodeId, RequestId, new_request_id
from exo.events.state import State
from exo.models.cards import CARDS, ModelCard, card_for

log = logging.getLogger("exo.api")


def serving_instance(state: State, node_id: NodeId, model: ModelId) -> Instance | None:
    """An instance of `model` whose entry rank (rank 0) runs on this node."""
    for instance in sorted(state.instances_of(model), key=lambda i: i.instance_id):
        entry = instance.shards[0]
        if entry.node_id == node_id:
            return instance
    return None


class NodeBackend(InstanceManager):
    def __init__(
        self,
        node_id: NodeId,
        replica: Replica,
        commands: CommandClient,
        runners: RunnerSupervisor,
        rng: random.Random,
        ready_timeout: float,
        worker: bool = True,
    ) -> None:
        super().__init__(replica, commands)
        self._node_id = node_id
        self._replica = replica
        self._commands = commands
        self._runners = runners
        self._rng = rng
        self._ready_timeout = ready_timeout
        self._worker = worker

    def models(self) -> list[ModelCard]:
        return list(CARDS.values())

    def state_view(self) -> dict[str, Any]:
        state = self._replica.state
        return {
            "node_id": self._node_id,
            "master": state.master,
            "term": state.term,
            "index": state.last_index,
            "hash": self._replica.hash(),
            "state": to_plain(state),
        }

    async def ready_runner(self, card: ModelCard) -> RunnerHandle:
        """A ready runner for the model, placing an instance first if there is none."""
        if not self._worker:
            # Serving through another node's runner is the data plane of issue 5.
            raise Unavailable(
                f"this node is coordinator-only (--no-worker) and runs no model; send "
                f"requests for {card.model_id} to a worker node"
            )
        placed = False
        with trio.move_on_after(self._ready_timeout):
            while True:
                state = self._replica.state
                instance = serving_instance(state, self._node_id, card.model_id)
                if instance is not None:
                    handle = self._runners.handles.get(instance.instance_id)
                    if handle is not None and handle.ready:
                        return handle
                elif not placed:
                    await self._place(card)
                    placed = True
                    continue
                await self._replica.wait_changed()
        raise Unavailable(
            f"model {card.model_id} was not ready within {self._ready_timeout:g} s "
            f"({self._progress(card.model_id)})"
        )

    async def _place(self, card: ModelCard) -> None:
        outcome = await self._commands.call(PlaceInstance(card.model_id, if_absent=True))
        if not outcome.accepted:
            raise Unavailable(f"cannot place {card.model_id}: {outcome.reason}")
        log.info("placed %s for a request (index %d)", card.model_id, outcome.index)

    def _progress(self, model: ModelId) -> str:
        state = self._replica.state
        download = state.download_status(self._node_id, model)
        instance = serving_instance(state, self._node_id, model)
        if instance is None:
            return "no instance placed on this node"
        runner = state.runner_status(instance.instance_id, self._node_id)
        parts = [f"download {download.phase if download else 'not started'}"]
        parts.append(f"runner {runner.phase if runner else 'not started'}")
        if runner is not None and runner.phase == "failed":
            parts.append(runner.detail.splitlines()[0] if runner.detail else "")
        return ", ".join(p for p in parts if p)

    @asynccontextmanager
    async def generate(
        self, model: str, messages: tuple[ChatMessage, ...], params: SamplingParams
    ) -> AsyncIterator[AsyncIterator[Chunk]]:
        card = card_for(model)
        if card is None:
            raise UnknownModel(model)
        handle = await self.ready_runner(card)
        request_id = new_request_id(self._rng)
        self._lifecycle(StartRequest(request_id, handle.instance.instance_id))
        outcome: list[Finished] = []
        error = "ended before completion (client left)"
        try:
            async with handle.stream(GenerateRequest(request_id, messages, params)) as chunks:
                yield _watch(chunks, outcome)
        except BackendError as exc:
            error = exc.message
            raise
        finally:
            self._close(request_id, outcome, error)

    def _close(self, request_id: RequestId, outcome: list[Finished], error: str) -> None:
        if outcome:
            done = outcome[0]
            self._lifecycle(
                FinishRequest(
                    request_id, done.finish_reason, done.prompt_tokens, done.completion_tokens
                )
            )
        else:
            self._lifecycle(FailRequest(request_id, error))

    def _lifecycle(self, command: StartRequest | FinishRequest | FailRequest) -> None:
        """Lifecycle reports never delay tokens: queued, not awaited."""
        self._commands.send_nowait(command)


async def _watch(chunks: AsyncIterator[Chunk], outcome: list[Finished]) -> AsyncIterator[Chunk]:
    async for chunk in chunks:
        if isinstance(chunk, Finished):
            outcome.append(chunk)
        yield chunk
