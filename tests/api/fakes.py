"""A scripted `Backend` for the HTTP tests: no actors, no runner."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

import trio
from attrs import define, field, frozen

from exo.api.admin_response import (
    DownloadEntry,
    InstanceView,
    ModelView,
    PlacementPreview,
    ShardView,
    StateView,
)
from exo.api.backend import BackendError, Chunk, UnknownInstance, UnknownModel, Update
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut, Tool
from exo.events.codec import to_plain
from exo.events.facts import FinishReason, Strategy
from exo.events.ids import ModelId, NodeId
from exo.models.cards import ModelCard

MODEL = "fake-model"


def fake_card(model_id: str = MODEL) -> ModelCard:
    return ModelCard(
        model_id=ModelId(model_id),
        display_name=f"{model_id} (fake)",
        source="bundled",
        location="nowhere",
        num_layers=2,
        hidden_size=8,
        num_heads=2,
        num_kv_heads=1,
        vocab_size=32,
        context_length=128,
        weight_bytes=1,
        loaded_bytes=1,
    )


@frozen
class Block:
    """A step that never yields: the fake generation hangs until cancelled."""


@frozen
class Raise:
    error: Exception


@frozen
class Pause:
    """A step that waits `seconds` before the next one (a slow prefill)."""

    seconds: float


Step = TokenOut | Finished | Block | Raise | Pause


def tokens(*texts: str, finish: FinishReason = "stop", prompt_tokens: int = 7) -> list[Step]:
    """A script that streams `texts` one token each, then finishes."""
    steps: list[Step] = [TokenOut("r", text, i) for i, text in enumerate(texts)]
    steps.append(Finished("r", finish, prompt_tokens, len(texts)))
    return steps


@define
class Call:
    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    tools: tuple[Tool, ...] = ()
    text: str | None = None


@define
class FakeBackend:
    """Streams `script` for every generate(); records calls and how each context was left."""

    script: Sequence[Step] = ()
    cards: list[ModelCard] = field(factory=lambda: [fake_card()])
    entry_error: BackendError | None = None
    state: dict[str, Any] = field(
        factory=lambda: {
            "node_id": "n1",
            "master": "n1",
            "term": 3,
            "index": 0,
            "hash": "0" * 64,
            "state": {},
        }
    )
    state_error: Exception | None = None
    # Keep a nursery (with a background task) open around the yielded stream, as a backend
    # pumping tokens from a runner might: the API must still nest it properly.
    hold_nursery: bool = False
    # With hold_nursery: the background task raises this once `fail_background` is set.
    background_error: Exception | None = None
    fail_background: trio.Event = field(factory=trio.Event)
    calls: list[Call] = field(factory=list)
    # Set when a generation's context is entered / left; `exit_errors` holds, per exit,
    # the exception that left it (None: left normally).
    entered: trio.Event = field(factory=trio.Event)
    exited: trio.Event = field(factory=trio.Event)
    exit_errors: list[BaseException | None] = field(factory=list)

    instances_by_id: dict[str, InstanceView] = field(factory=dict)
    # The `min_nodes` each placed instance was asked for (not in the view).
    min_nodes_by_id: dict[str, int] = field(factory=dict)
    # Catalogue aliases GET /models and /v1/models list beside the cards.
    aliases: dict[str, str] = field(factory=dict)
    # Raised by find_model, as a hub lookup would (gated repo, hub unreachable).
    find_error: BackendError | None = None
    # What `updates` streams after its snapshot, and the `after` of each call.
    events: list[dict[str, Any]] = field(factory=list)
    updates_after: list[int | None] = field(factory=list)
    endless_updates: bool = True
    # What GET /downloads lists: (node, model) -> entry, as order_download leaves it.
    download_entries: dict[tuple[str, str], DownloadEntry] = field(factory=dict)

    def models(self) -> list[ModelCard]:
        return list(self.cards)

    async def find_model(self, model: str) -> ModelCard:
        if self.find_error is not None:
            raise self.find_error
        return self._card(model)

    async def add_local_model(self, name: str, path: str) -> ModelCard:
        card = fake_card(name)
        self.cards.append(card)
        return card

    def model_views(self) -> list[ModelView]:
        views = [
            ModelView(id=c.model_id, card=to_plain(c), downloads={}, instances=[])
            for c in self.cards
        ]
        views += [
            ModelView(id=a, alias_of=repo, card=None, downloads={})
            for a, repo in sorted(self.aliases.items())
        ]
        return views

    async def updates(self, after: int | None) -> AsyncIterator[Update]:
        """A snapshot unless resuming, `events` after `after`, a keepalive, then silence
        (or the end, for a client that reads whole bodies)."""
        self.updates_after.append(after)
        if after is None:
            yield "snapshot", self.state
        for event in self.events:
            if after is None or event["index"] > after:
                yield "event", event
        yield "keepalive", {}
        if self.endless_updates:  # as a node's: the client decides when it has enough
            await trio.sleep_forever()

    def downloads(self) -> list[DownloadEntry]:
        return list(self.download_entries.values())

    async def order_download(
        self, model: str, node: str | None, action: Literal["fetch", "stop"]
    ) -> DownloadEntry:
        card = self._card(model)
        entry = DownloadEntry(
            node=node or self.state["node_id"],
            model=card.model_id,
            phase="downloading" if action == "fetch" else "stopped",
            bytes_done=0,
            bytes_total=10,
            detail="",
            rate=0,
            eta_seconds=None,
            order=action,
        )
        self.download_entries[(entry.node, card.model_id)] = entry
        return entry

    async def section_updates(self) -> AsyncIterator[Update]:
        """Every section of the fake state, a keepalive, then silence (or the end)."""
        state = self.state["state"]
        header = {k: self.state[k] for k in ("node_id", "master", "term", "index")}
        sections = {name: state.get(name, {}) for name in ("nodes", "links", "instances")}
        yield "sections", {**header, "sections": sections}
        yield "keepalive", {}
        if self.endless_updates:
            await trio.sleep_forever()

    def _card(self, model: str) -> ModelCard:
        card = next((c for c in self.cards if c.model_id == model), None)
        if card is None:
            raise UnknownModel(model)
        return card

    def instances(self) -> list[InstanceView]:
        return [self.instances_by_id[i] for i in sorted(self.instances_by_id)]

    def instance(self, instance_id: str) -> InstanceView:
        if instance_id not in self.instances_by_id:
            raise UnknownInstance(instance_id)
        return self.instances_by_id[instance_id]

    async def create_instance(
        self,
        model: str,
        strategy: str,
        nodes: tuple[str, ...] | None,
        min_nodes: int,
        context_length: int | None = None,
    ) -> InstanceView:
        self._card(model)
        if self.entry_error is not None:
            raise self.entry_error
        instance_id = f"inst-{len(self.instances_by_id) + 1}"
        shards = [ShardView(n, r, 0, 2, False) for r, n in enumerate(nodes or ("n1",))]
        view = InstanceView(
            instance_id, model, cast(Strategy, strategy), "loading", shards, [], context_length
        )
        self.instances_by_id[instance_id] = view
        self.min_nodes_by_id[instance_id] = min_nodes
        return view

    async def delete_instance(self, instance_id: str) -> None:
        self.instance(instance_id)
        del self.instances_by_id[instance_id]

    async def previews(
        self, model: str, context_length: int | None = None
    ) -> list[PlacementPreview]:
        self._card(model)
        shards = [ShardView("n1", 0, 0, 2, False)]
        return [PlacementPreview("pipeline", 1, shards, {NodeId("n1"): 1}, 100.0, True, "")]

    def state_view(self) -> StateView:
        if self.state_error is not None:
            raise self.state_error
        return StateView(**self.state)

    async def _stream(self) -> AsyncGenerator[Chunk, None]:
        for step in self.script:
            await trio.lowlevel.checkpoint()
            if isinstance(step, Block):
                await trio.sleep_forever()
            elif isinstance(step, Raise):
                raise step.error
            elif isinstance(step, Pause):
                await trio.sleep(step.seconds)
            else:
                yield step

    async def _background(self) -> None:
        await self.fail_background.wait()
        if self.background_error is not None:
            raise self.background_error
        await trio.sleep_forever()

    @asynccontextmanager
    async def generate(
        self,
        model: str,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        tools: tuple[Tool, ...] = (),
        text: str | None = None,
    ) -> AsyncIterator[AsyncIterator[Chunk]]:
        self.calls.append(Call(model, messages, params, tools, text))
        if self.entry_error is not None:
            raise self.entry_error
        self.entered.set()
        stream = self._stream()
        try:
            if self.hold_nursery:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._background)
                    yield stream
                    nursery.cancel_scope.cancel()
            else:
                yield stream
        except BaseException as error:
            self.exit_errors.append(error)
            raise
        else:
            self.exit_errors.append(None)
        finally:
            await stream.aclose()
            self.exited.set()
