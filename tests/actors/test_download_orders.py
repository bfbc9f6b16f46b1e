"""Users' download orders (`POST`/`DELETE /downloads`) in the pure core: who may be
ordered, how orders count, and what each node then holds and fetches."""

from __future__ import annotations

import attrs

from exo.actors.decide import Rejected, decide
from exo.actors.download import models_needed
from exo.actors.downloads_host import download_views
from exo.events.commands import OrderDownload
from exo.events.events import (
    DownloadOrdered,
    DownloadStatusChanged,
    Event,
    IndexedEvent,
    InstanceCreated,
    ModelAdded,
    NodeProfiled,
)
from exo.events.facts import DownloadStatus, Instance, Shard, WeightFile
from exo.events.ids import InstanceId, ModelId, NodeId
from exo.events.state import State, apply
from exo.models.hub import files_needed, wants_model
from tests.actors.test_placement_and_decide import envelope, hub_card, profile, state_with

A, B = NodeId("a"), NodeId("b")
CARD = attrs.evolve(
    hub_card(),
    weight_files=(
        WeightFile("model-1.safetensors", 1, first_layer=0, end_layer=2),
        WeightFile("model-2.safetensors", 1, first_layer=2, end_layer=4),
    ),
)
MODEL = CARD.model_id


def after(state: State, *events: Event) -> State:
    for event in events:
        state = apply(state, IndexedEvent(state.last_index + 1, 1, event))
    return state


def test_orders_name_a_known_worker_node_and_model_and_count_up() -> None:
    state = after(state_with(a=8, b=8), ModelAdded(CARD))
    coordinator = after(
        State(), NodeProfiled(NodeId("c"), attrs.evolve(profile(8), worker=False)), ModelAdded(CARD)
    )
    refusals = {
        "node": decide(state, envelope(OrderDownload(NodeId("z"), MODEL, "fetch"))),
        "model": decide(state, envelope(OrderDownload(A, ModelId("org/none"), "fetch"))),
        "coordinator": decide(
            coordinator, envelope(OrderDownload(NodeId("c"), MODEL, "fetch"), origin="c")
        ),
    }
    assert refusals == {
        "node": Rejected("no node z in the cluster"),
        "model": Rejected("unknown model org/none"),
        "coordinator": Rejected("node c is coordinator-only and holds no models"),
    }
    assert decide(state, envelope(OrderDownload(A, MODEL, "stop"))) == [
        DownloadOrdered(A, MODEL, "stop")
    ]
    state = after(state, DownloadOrdered(A, MODEL, "stop"), DownloadOrdered(A, MODEL, "fetch"))
    order = state.download_order(A, MODEL)
    assert order is not None and (order.action, order.serial) == ("fetch", 2)


def test_a_node_holds_what_is_placed_or_ordered_and_never_what_is_stopped() -> None:
    shard = Shard(A, 0, 0, 2)
    state = after(
        state_with(a=8, b=8),
        ModelAdded(CARD),
        InstanceCreated(Instance(InstanceId("inst-1"), MODEL, "pipeline", (shard,))),
    )
    # Placed: the shard's file only.
    assert models_needed(state, A) == [MODEL] and models_needed(state, B) == []
    assert files_needed(state, A, CARD) == ("model-1.safetensors",)
    # Ordered onto a node without a shard: all of it.
    state = after(state, DownloadOrdered(B, MODEL, "fetch"))
    assert models_needed(state, B) == [MODEL]
    assert files_needed(state, B, CARD) == ("model-1.safetensors", "model-2.safetensors")
    # Stopped: not even the placed shard.
    state = after(state, DownloadOrdered(A, MODEL, "stop"))
    assert not wants_model(state, A, MODEL) and models_needed(state, A) == []
    # Listed with the order and, while it downloads, the time left at its rate.
    state = after(
        state,
        DownloadStatusChanged(B, MODEL, DownloadStatus("downloading", 100, 400, rate=50)),
    )
    views = {(v.node, v.order): v for v in download_views(state)}
    assert views[("a", "stop")].phase is None
    assert views[("b", "fetch")].eta_seconds == 6.0
