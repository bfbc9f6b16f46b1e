"""The node's side of the HTTP API: finds (or places) an instance for a model, waits until
it is ready, streams the request through its runner here or through the data plane to the
node running its rank 0, and reports the request's lifecycle."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Literal

import attrs
import trio
from msgspec import to_builtins

from exo.actors.command_client import CommandClient
from exo.actors.data_plane import DataPlane
from exo.actors.downloads_host import DownloadOrders
from exo.actors.instances_host import InstanceManager
from exo.actors.replica import Replica
from exo.actors.request_tally import RequestTallies
from exo.actors.runner_handle import LOAD_FAILED, RunnerHandle
from exo.actors.runners import RunnerSupervisor
from exo.actors.state_sections import changed_sections
from exo.api.admin_response import DownloadEntry, DownloadProgress, ModelView, StateView
from exo.api.backend import (
    KEEPALIVE_S,
    Chunk,
    InvalidRequest,
    ModelForbidden,
    Unavailable,
    UnknownModel,
    Update,
)
from exo.engine.protocol import ChatMessage, Finished, GenerateRequest, SamplingParams, Tool
from exo.events.codec import to_plain
from exo.events.commands import (
    AddModel,
    PlaceInstance,
)
from exo.events.facts import Instance, RunnerStatus
from exo.events.ids import ModelId, NodeId, new_request_id
from exo.events.state import State
from exo.logs import request_context
from exo.metrics import NodeMetrics
from exo.models.cards import CARDS, ModelCard, canonical_name, card_for
from exo.models.catalog import ALIASES
from exo.models.hub import NotAModel, parse_model_name
from exo.models.hub_errors import HubError, HubUnreachable, RepoGated, RepoNotFound

log = logging.getLogger("exo.api")


def serving_instance(state: State, node_id: NodeId, model: ModelId) -> Instance | None:
    """An instance of `model` whose entry rank (rank 0) runs on this node."""
    for instance in sorted(state.instances_of(model), key=lambda i: i.instance_id):
        entry = instance.shards[0]
        if entry.node_id == node_id:
            return instance
    return None


def ready_remote_instance(state: State, node_id: NodeId, model: ModelId) -> Instance | None:
    """An instance of `model` whose rank 0 runs on another node and is ready there."""
    for instance in sorted(state.instances_of(model), key=lambda i: i.instance_id):
        entry = instance.shards[0].node_id
        status = state.runner_status(instance.instance_id, entry)
        if entry != node_id and status is not None and status.phase in ("ready", "running"):
            return instance
    return None


# A ready runner on this node, or (node, instance) of a ready instance elsewhere.
Route = RunnerHandle | tuple[NodeId, Instance]
# Reads a hub repo's card, and a local directory's (name, path) (I/O off the event loop).
Describe = Callable[[str], Awaitable[ModelCard]]
DescribeLocal = Callable[[str, str], Awaitable[ModelCard]]
# How long adding a model waits for the master (an election may be under way).
ADD_MODEL_TIMEOUT = 30.0
# A burst of events (a request's tallies, a node joining) reaches a page as one message.
SECTIONS_COALESCE_S = 0.2


def failure_of(state: State, model: ModelId) -> str | None:
    """Why every instance of `model` is failing, when each has a shard whose download or
    runner failed: waiting for it would only wait out the timeout."""
    instances = state.instances_of(model)
    reasons: list[str] = []
    for instance in sorted(instances, key=lambda i: i.instance_id):
        reason = None
        for shard in instance.shards:
            download = state.download_status(shard.node_id, model)
            runner = state.runner_status(instance.instance_id, shard.node_id)
            if download is not None and download.phase == "failed":
                reason = f"download failed on node {shard.node_id}: {download.detail}"
            elif download is not None and download.phase == "stopped":
                reason = (
                    f"its download was stopped on node {shard.node_id}; "
                    "start it again with POST /downloads"
                )
            elif runner is not None and runner.phase == "failed" and cannot_load(runner):
                first = runner.detail.strip().splitlines()[:1] or [""]
                reason = f"runner failed on node {shard.node_id}: {first[0]}"
            if reason:
                break
        if reason is None:
            return None
        reasons.append(reason)
    return "; ".join(reasons) if reasons else None


def cannot_load(runner: RunnerStatus) -> bool:
    """A runner that failed to load the model (it will fail again on every restart), not
    one that crashed while serving: that one restarts within seconds, worth waiting for."""
    return runner.detail.startswith(LOAD_FAILED)


def model_view(state: State, card: ModelCard) -> ModelView:
    """A model as GET /models shows it: its card and every node's download of it."""
    downloads = {
        node: DownloadProgress.of(per_model[card.model_id])
        for node, per_model in sorted(state.downloads.items())
        if card.model_id in per_model
    }
    return ModelView(
        id=card.model_id,
        card=to_plain(card),
        downloads=downloads,
        instances=sorted(i.instance_id for i in state.instances_of(card.model_id)),
    )


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
        data_plane: DataPlane | None = None,
        describe: Describe | None = None,
        describe_local: DescribeLocal | None = None,
        tallies: RequestTallies | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        super().__init__(replica, commands)
        self._node_id = node_id
        self._replica = replica
        self._commands = commands
        self._runners = runners
        self._rng = rng
        self._ready_timeout = ready_timeout
        self._worker = worker
        self._data_plane = data_plane
        self._describe = describe
        self._describe_local = describe_local
        # Started and ended requests, reported in batches (`request_tally.py`).
        self.tallies = tallies if tallies is not None else RequestTallies()
        self._metrics = metrics
        self._download_orders = DownloadOrders(node_id, replica, commands, self.find_model)

    def models(self) -> list[ModelCard]:
        registered = self._replica.state.models
        return [*CARDS.values(), *(registered[m] for m in sorted(registered))]

    def model_views(self) -> list[ModelView]:
        state = self._replica.state
        views = [model_view(state, card) for card in self.models()]
        known = {v.id for v in views}
        for alias, repo in sorted(ALIASES.items()):
            if repo not in known:
                views.append(ModelView(id=alias, alias_of=repo, card=None, downloads={}))
        return views

    async def add_local_model(self, name: str, path: str) -> ModelCard:
        if card_for(name, self._replica.state.models) is not None or name in ALIASES:
            raise InvalidRequest(f"a model named {name!r} exists already", "model")
        if self._describe_local is None:
            raise InvalidRequest("this node cannot serve local model directories", "path")
        try:
            card = await self._describe_local(name, path)
        except (NotAModel, OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot serve {path}: {exc}", "path") from exc
        return await self._add(attrs.evolve(card, hosts=(self._node_id,)))

    async def find_model(self, model: str) -> ModelCard:
        card = card_for(model, self._replica.state.models)
        if card is not None:
            return card
        name = canonical_name(model)
        if parse_model_name(name) is None or self._describe is None:
            raise UnknownModel(model)
        try:
            card = await self._describe(name)
        except RepoNotFound as exc:
            raise UnknownModel(model, str(exc)) from exc
        except RepoGated as exc:
            raise ModelForbidden(str(exc)) from exc
        except NotAModel as exc:
            raise InvalidRequest(f"cannot serve {model}: {exc}", "model") from exc
        except HubUnreachable as exc:
            raise Unavailable(f"cannot read {model} from the hub: {exc}") from exc
        except HubError as exc:
            raise InvalidRequest(f"cannot serve {model}: {exc}", "model") from exc
        return await self._add(card)

    async def _add(self, card: ModelCard) -> ModelCard:
        """Add the card to the cluster (the first one added under its id wins)."""
        with trio.move_on_after(ADD_MODEL_TIMEOUT):
            outcome = await self._commands.call(AddModel(card))
            if not outcome.accepted:
                raise InvalidRequest(f"cannot add {card.model_id}: {outcome.reason}", "model")
            model_id = card.model_id
            return await self._replica.wait_until(lambda s: card_for(model_id, s.models))
        raise Unavailable(f"no master answered within {ADD_MODEL_TIMEOUT:g} s; try again")

    def state_view(self) -> StateView:
        state = self._replica.state
        return StateView(
            self._node_id,
            state.master,
            state.term,
            state.last_index,
            self._replica.hash(),
            to_plain(state),
        )

    async def updates(self, after: int | None) -> AsyncIterator[Update]:
        replica = self._replica
        index = after  # where the events it no longer keeps are asked for: a snapshot
        resets = replica.resets
        while True:
            events = replica.events_after(index) if index is not None else None
            if events is None or replica.resets != resets:
                resets = replica.resets
                view = self.state_view()
                index = view.index
                yield "snapshot", to_builtins(view)
                continue
            if not events:
                # No checkpoint between the check above and this wait: nothing is missed.
                with trio.move_on_after(KEEPALIVE_S) as quiet:
                    await replica.wait_changed()
                if quiet.cancelled_caught:
                    yield "keepalive", {}
                continue
            for event in events:
                index = event.index
                yield "event", to_plain(event)

    def downloads(self) -> list[DownloadEntry]:
        return self._download_orders.downloads()

    async def order_download(
        self, model: str, node: str | None, action: Literal["fetch", "stop"]
    ) -> DownloadEntry:
        return await self._download_orders.order(model, node, action)

    async def section_updates(self) -> AsyncIterator[Update]:
        replica = self._replica
        previous: State | None = None
        while True:
            state = replica.state
            sections = changed_sections(state, previous, self.model_views)
            sections["serving"] = self._serving_here()
            header = {"node_id": self._node_id, "master": state.master, "term": state.term}
            yield "sections", {**header, "index": state.last_index, "sections": sections}
            previous = state
            while replica.state is previous:
                with trio.move_on_after(KEEPALIVE_S) as quiet:
                    await replica.wait_changed()
                if quiet.cancelled_caught:
                    yield "keepalive", {}
            await trio.sleep(SECTIONS_COALESCE_S)

    def _serving_here(self) -> dict[str, dict[str, int]]:
        """The runners on this node: requests they hold and their batch size (not
        replicated: a runner's queue is known only where it runs)."""
        return {
            instance_id: {"in_flight": handle.in_flight, "batch_size": handle.concurrency}
            for instance_id, handle in sorted(self._runners.handles.items())
        }

    async def _ready_route(self, card: ModelCard) -> Route:
        """Where a request for the model runs: a ready rank-0 runner on this node, or else
        the node of a ready instance elsewhere (through the data plane). With no instance
        anywhere, one is placed first."""
        placed = False
        with trio.move_on_after(self._ready_timeout):
            while True:
                state = self._replica.state
                local = serving_instance(state, self._node_id, card.model_id)
                if local is not None:
                    handle = self._runners.handles.get(local.instance_id)
                    if handle is not None and handle.ready:
                        return handle
                remote = (
                    ready_remote_instance(state, self._node_id, card.model_id)
                    if self._data_plane is not None
                    else None
                )
                if remote is not None:
                    return remote.shards[0].node_id, remote
                failure = failure_of(state, card.model_id)
                if failure is not None:
                    raise Unavailable(f"model {card.model_id} cannot serve now: {failure}")
                if not state.instances_of(card.model_id) and not placed:
                    if not self._worker and self._data_plane is None:
                        raise Unavailable(
                            f"this node is coordinator-only (--no-worker) and runs no model; "
                            f"send requests for {card.model_id} to a worker node"
                        )
                    if not self._joined(state):
                        # Just started: the request is served once this node has joined.
                        await self._replica.wait_changed()
                        continue
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

    def _joined(self, state: State) -> bool:
        """Whether a request here need not wait for this node to join before placing: a
        worker's registration is in the state (its API answers before that); a
        coordinator is never placed on, so it never waits for its own."""
        return not self._worker or self._node_id in state.nodes

    def _progress(self, model: ModelId) -> str:
        state = self._replica.state
        download = state.download_status(self._node_id, model)
        instance = serving_instance(state, self._node_id, model)
        if instance is None:
            others = state.instances_of(model)
            if not others:
                joined = self._joined(state)
                return "no instance placed" if joined else "this node has not joined a cluster yet"
            entry = others[0].shards[0].node_id
            runner = state.runner_status(others[0].instance_id, entry)
            return f"instance on node {entry}, runner {runner.phase if runner else 'not started'}"
        runner = state.runner_status(instance.instance_id, self._node_id)
        parts = [f"download {download.phase if download else 'not started'}"]
        parts.append(f"runner {runner.phase if runner else 'not started'}")
        if runner is not None and runner.phase == "failed":
            parts.append(runner.detail.splitlines()[0] if runner.detail else "")
        return ", ".join(p for p in parts if p)

    @asynccontextmanager
    async def generate(
        self,
        model: str,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        tools: tuple[Tool, ...] = (),
        text: str | None = None,
    ) -> AsyncIterator[AsyncIterator[Chunk]]:
        started = time.perf_counter()
        card = await self.find_model(model)
        route = await self._ready_route(card)
        request_id = new_request_id(self._rng)
        request = GenerateRequest(request_id, messages, params, tools, text)
        if isinstance(route, RunnerHandle):
            instance_id = route.instance.instance_id
            stream = route.stream(request)
        else:
            assert self._data_plane is not None
            peer, instance = route
            instance_id = instance.instance_id
            stream = self._data_plane.relay(peer, instance_id, request)
        self.tallies.started(instance_id)
        outcome: list[Finished] = []
        # Log lines of this request's task, the route's included, carry its id.
        try:
            with request_context(request_id):
                log.debug("%s for %s runs on %s", request_id, card.model_id, instance_id)
                # Each generator is closed on the way out, even when its reader stops at
                # Finished, one step short of its end (else the garbage collector would).
                async with stream as chunks, aclosing(_watch(chunks, outcome)) as watched:
                    if self._metrics is None:
                        yield watched
                    else:
                        timed = self._metrics.timed(watched, card.model_id, started)
                        async with aclosing(timed):
                            yield timed
        finally:
            self.tallies.ended(instance_id, outcome[0] if outcome else None)


async def _watch(
    chunks: AsyncIterator[Chunk], outcome: list[Finished]
) -> AsyncGenerator[Chunk, None]:
    async for chunk in chunks:
        if isinstance(chunk, Finished):
            outcome.append(chunk)
        yield chunk
