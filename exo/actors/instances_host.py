"""The node's side of the `/instances` API: views of instances derived from the state,
placement through the master, and previews (`previews.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import trio

from exo.actors.command_client import CommandClient
from exo.actors.decide import instance_id_for
from exo.actors.placement import with_commitments
from exo.actors.previews import Preview, previews
from exo.actors.replica import Replica
from exo.api.admin_response import InstanceStatus, InstanceView, PlacementPreview, ShardView
from exo.api.backend import InvalidRequest, Unavailable, UnknownInstance, UnknownModel
from exo.events.commands import Command, CommandOutcome, DeleteInstance, PlaceInstance
from exo.events.facts import Instance, Strategy
from exo.events.ids import InstanceId, NodeId
from exo.events.state import State
from exo.models.cards import ModelCard, card_for

# How long an API call waits for the master (an election may be under way).
COMMAND_TIMEOUT = 30.0
T = TypeVar("T")


async def command_and_wait(
    commands: CommandClient,
    replica: Replica,
    command: Command,
    refused: Callable[[str], Exception],
    done: Callable[[State, CommandOutcome], T | None],
) -> T:
    """Send `command` to the master and wait until this node's replica shows its effect
    (the first non-None `done(state, outcome)`): what an API call that changes the
    cluster answers with. A refusal raises `refused(reason)`; no answer within
    COMMAND_TIMEOUT raises Unavailable."""
    with trio.move_on_after(COMMAND_TIMEOUT):
        outcome = await commands.call(command)
        if not outcome.accepted:
            raise refused(outcome.reason)
        return await replica.wait_until(lambda state: done(state, outcome))
    raise Unavailable(f"no master answered within {COMMAND_TIMEOUT:g} s; try again")


def instance_status(state: State, instance: Instance) -> InstanceStatus:
    downloads = [state.download_status(s.node_id, instance.model) for s in instance.shards]
    runners = [state.runner_status(instance.instance_id, s.node_id) for s in instance.shards]
    if any(d is not None and d.phase == "failed" for d in downloads) or any(
        r is not None and r.phase == "failed" for r in runners
    ):
        return "failed"
    if any(d is None or d.phase != "complete" for d in downloads):
        return "downloading"
    if all(r is not None and r.phase in ("ready", "running") for r in runners):
        return "ready"
    return "loading"


def instance_view(state: State, instance: Instance) -> InstanceView:
    return InstanceView(
        instance.instance_id,
        instance.model,
        instance.strategy,
        instance_status(state, instance),
        [ShardView.of(s) for s in instance.shards],
        list(instance.ring),
        instance.context_length,
    )


def preview_view(preview: Preview) -> PlacementPreview:
    return PlacementPreview(
        preview.strategy,
        preview.node_count,
        [ShardView.of(s) for s in preview.shards],
        dict(preview.memory_by_node),
        preview.predicted_tokens_per_second,
        preview.valid,
        preview.reason,
    )


class InstanceManager:
    def __init__(self, replica: Replica, commands: CommandClient) -> None:
        self._replica = replica
        self._commands = commands

    def instances(self) -> list[InstanceView]:
        state = self._replica.state
        return [instance_view(state, state.instances[i]) for i in sorted(state.instances)]

    def instance(self, instance_id: str) -> InstanceView:
        state = self._replica.state
        instance = state.instances.get(InstanceId(instance_id))
        if instance is None:
            raise UnknownInstance(instance_id)
        return instance_view(state, instance)

    async def find_model(self, model: str) -> ModelCard:
        card = card_for(model, self._replica.state.models)
        if card is None:
            raise UnknownModel(model)
        return card

    async def create_instance(
        self,
        model: str,
        strategy: str,
        nodes: tuple[str, ...] | None,
        min_nodes: int,
        context_length: int | None = None,
    ) -> InstanceView:
        card = await self.find_model(model)
        command = PlaceInstance(
            card.model_id,
            cast(Strategy, strategy),
            min_nodes,
            tuple(NodeId(n) for n in nodes) if nodes is not None else None,
            context_length=context_length,
        )
        instance = await command_and_wait(
            self._commands,
            self._replica,
            command,
            lambda reason: InvalidRequest(f"cannot place {card.model_id}: {reason}"),
            lambda state, outcome: state.instances.get(instance_id_for(outcome.command_id)),
        )
        return instance_view(self._replica.state, instance)

    async def delete_instance(self, instance_id: str) -> None:
        self.instance(instance_id)  # UnknownInstance when there is none
        await command_and_wait(
            self._commands,
            self._replica,
            DeleteInstance(InstanceId(instance_id)),
            lambda _: UnknownInstance(instance_id),
            lambda state, _: True if instance_id not in state.instances else None,
        )

    async def previews(
        self, model: str, context_length: int | None = None
    ) -> list[PlacementPreview]:
        card = await self.find_model(model)
        state = with_commitments(self._replica.state)
        return [preview_view(p) for p in previews(state, card, context_length)]
