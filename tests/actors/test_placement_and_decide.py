import attrs
import pytest

from exo.actors.decide import Rejected, decide, instance_id_for
from exo.actors.placement import (
    HEADROOM_BYTES,
    PlacementError,
    committed_bytes,
    kv_cache_bytes,
    place,
    required_bytes,
    split_layers,
)
from exo.events.commands import (
    AddModel,
    DeleteInstance,
    Envelope,
    MarkNodeDown,
    PlaceInstance,
    RegisterNode,
    ReportRequests,
    ReportRunnerStatus,
)
from exo.events.events import (
    IndexedEvent,
    InstanceCreated,
    MasterElected,
    ModelAdded,
    NodeProfiled,
    RequestsTallied,
    RequestStarted,
    RunnerStatusChanged,
)
from exo.events.facts import ModelCard, NodeProfile, RequestRecord, RequestTally, RunnerStatus
from exo.events.ids import CommandId, InstanceId, ModelId, NodeId, RequestId
from exo.events.state import State, apply
from exo.models.cards import BUNDLED_MODEL, CARDS

GIB = 2**30
CARD = CARDS[BUNDLED_MODEL]


def profile(free_gib: float) -> NodeProfile:
    return NodeProfile("h", "linux-x86_64", 2, 32 * GIB, int(free_gib * GIB), "cpu", 1, 2)


def state_with(**free: float) -> State:
    state = State()
    for index, (name, gib) in enumerate(sorted(free.items()), start=1):
        state = apply(state, IndexedEvent(index, 1, NodeProfiled(NodeId(name), profile(gib))))
    return state


def envelope(command: object, origin: str = "a", cid: str = "cmd-1") -> Envelope:
    return Envelope(CommandId(cid), NodeId(origin), command)  # type: ignore[arg-type]


def test_split_layers_is_proportional_and_gives_everyone_a_layer() -> None:
    assert split_layers(30, [1]) == [30]
    assert split_layers(30, [1, 1, 1]) == [10, 10, 10]
    assert split_layers(30, [2, 1]) == [20, 10]
    assert split_layers(30, [100, 1, 1]) == [28, 1, 1]
    assert sum(split_layers(31, [3, 5, 7])) == 31


def test_single_node_pipeline_takes_every_layer() -> None:
    placement = place(state_with(a=8), CARD, "pipeline")
    (shard,) = placement.shards
    assert (shard.node_id, shard.rank, shard.start_layer, shard.end_layer) == ("a", 0, 0, 30)
    assert placement.memory_by_node[NodeId("a")] == required_bytes(CARD, 0, 30)
    assert not shard.keep_quantized  # float32 fits: the CPU runner widens the weights


def test_a_node_without_room_is_refused_with_numbers() -> None:
    # The figure is what the weights as stored need: float32 would need more still.
    with pytest.raises(PlacementError, match=r"node a has 0\.10 GiB free, needs 0\.\d\d GiB"):
        place(state_with(a=0.1), CARD, "pipeline")


def test_a_cpu_node_keeps_the_weights_quantized_when_float32_does_not_fit() -> None:
    widened = required_bytes(CARD, 0, 30)
    stored = required_bytes(CARD, 0, 30, keep_quantized=True)
    assert stored < widened
    room_gib = (stored + widened) / 2 / GIB
    placement = place(state_with(a=room_gib), CARD, "pipeline")
    (shard,) = placement.shards
    assert shard.keep_quantized and placement.memory_by_node[NodeId("a")] == stored
    # A half-precision cache beside quantized weights: 2 bytes per element, not 4.
    assert stored - HEADROOM_BYTES == CARD.weight_bytes + kv_cache_bytes(CARD, 30, None, "cuda")


def test_tensor_needs_divisible_heads() -> None:
    with pytest.raises(PlacementError, match="9 attention heads do not divide by 2 nodes"):
        place(state_with(a=8, b=8), CARD, "tensor", min_nodes=2)
    assert len(place(state_with(a=8, b=8, c=8), CARD, "tensor", min_nodes=3).shards) == 3


def test_pipeline_across_nodes_orders_by_free_memory() -> None:
    placement = place(state_with(a=4, b=8), CARD, "pipeline", min_nodes=2)
    assert [(s.node_id, s.start_layer, s.end_layer) for s in placement.shards] == [
        ("b", 0, 20),
        ("a", 20, 30),
    ]


def test_no_nodes_is_a_clear_error() -> None:
    with pytest.raises(PlacementError, match="no nodes"):
        place(State(), CARD, "pipeline")


def test_place_creates_an_instance_with_an_id_derived_from_the_command() -> None:
    state = state_with(a=8)
    decision = decide(state, envelope(PlaceInstance(BUNDLED_MODEL)))
    assert isinstance(decision, list)
    (created,) = decision
    assert isinstance(created, InstanceCreated)
    assert created.instance.instance_id == instance_id_for(CommandId("cmd-1"))
    # The same command decided again names the same instance: retries are idempotent.
    assert decide(state, envelope(PlaceInstance(BUNDLED_MODEL))) == decision


def test_if_absent_does_not_place_twice() -> None:
    state = state_with(a=8)
    (created,) = decide(state, envelope(PlaceInstance(BUNDLED_MODEL)))  # type: ignore[misc]
    state = apply(state, IndexedEvent(state.last_index + 1, 1, created))
    assert decide(state, envelope(PlaceInstance(BUNDLED_MODEL, if_absent=True), cid="cmd-2")) == []
    assert len(decide(state, envelope(PlaceInstance(BUNDLED_MODEL), cid="cmd-3"))) == 1  # type: ignore[arg-type]


def test_rejections_say_why() -> None:
    state = state_with(a=8)
    assert decide(state, envelope(PlaceInstance(ModelId("nope")))) == Rejected("unknown model nope")
    assert decide(state, envelope(DeleteInstance(InstanceId("i")))) == Rejected("no instance i")


def test_unchanged_reports_produce_no_events() -> None:
    state = state_with(a=8)
    assert decide(state, envelope(RegisterNode(profile(8)))) == []
    assert (
        decide(state, envelope(ReportRunnerStatus(InstanceId("gone"), RunnerStatus("ready")))) == []
    )
    assert decide(state, envelope(ReportRequests(()))) == []
    # A tally of an instance the state does not have counts nothing.
    assert decide(state, envelope(ReportRequests((RequestTally(InstanceId("i"), 2, 1),)))) == []


def test_request_tallies_count_tokens_and_gauge_what_is_in_flight() -> None:
    state = state_with(a=8)
    (created,) = decide(state, envelope(PlaceInstance(BUNDLED_MODEL)))  # type: ignore[misc]
    state = apply(state, IndexedEvent(state.last_index + 1, 1, created))
    instance_id = created.instance.instance_id  # type: ignore[union-attr]
    report = ReportRequests((RequestTally(instance_id, 3, 1, 0, 7, 9),))
    (tallied,) = decide(state, envelope(report))  # type: ignore[misc]
    assert tallied == RequestsTallied(NodeId("a"), report.tallies)
    state = apply(state, IndexedEvent(state.last_index + 1, 1, tallied))
    assert dict(state.in_flight[NodeId("a")]) == {instance_id: 3}
    counters = state.request_counters[instance_id]
    assert (counters.finished, counters.prompt_tokens, counters.completion_tokens) == (1, 7, 9)
    # The same gauge again and nothing ended: no event.
    assert decide(state, envelope(ReportRequests((RequestTally(instance_id, 3),)))) == []
    # All done: the gauge goes, the counters stay.
    (idle,) = decide(state, envelope(ReportRequests((RequestTally(instance_id, 0, 3),))))  # type: ignore[misc]
    state = apply(state, IndexedEvent(state.last_index + 1, 1, idle))
    assert not state.in_flight and state.request_counters[instance_id].finished == 4


def test_coordinator_only_nodes_are_never_placed_on() -> None:
    coordinator = NodeProfile("h", "linux-x86_64", 2, 64 * GIB, 60 * GIB, "cpu", 1, 2, worker=False)
    state = apply(state_with(a=4), IndexedEvent(2, 1, NodeProfiled(NodeId("c"), coordinator)))
    # The coordinator has the most memory, yet the worker gets the model.
    assert [s.node_id for s in place(state, CARD, "pipeline").shards] == ["a"]
    with pytest.raises(PlacementError, match="no nodes are available"):
        place(
            apply(State(), IndexedEvent(1, 1, NodeProfiled(NodeId("c"), coordinator))),
            CARD,
            "pipeline",
        )
    with pytest.raises(PlacementError, match=r"coordinator-only nodes .* host no runners: c"):
        place(state, CARD, "pipeline", nodes=(NodeId("c"),))


def test_memory_is_planned_for_the_requested_context() -> None:
    full = required_bytes(CARD, 0, 30, keep_quantized=True)
    short = required_bytes(CARD, 0, 30, context=1024, keep_quantized=True)
    assert short < full
    # A node with room for the short context but not the whole one.
    room_gib = (short + full) / 2 / GIB
    with pytest.raises(PlacementError, match="needs"):
        place(state_with(a=room_gib), CARD, "pipeline")
    placement = place(state_with(a=room_gib), CARD, "pipeline", context=1024)
    assert placement.memory_by_node[NodeId("a")] == short
    with pytest.raises(PlacementError, match="not within the model's context of 8192"):
        place(state_with(a=8), CARD, "pipeline", context=8193)
    # The instance remembers the context, so its runners cap requests at it.
    (created,) = decide(
        state_with(a=room_gib), envelope(PlaceInstance(BUNDLED_MODEL, context_length=1024))
    )  # type: ignore[misc]
    assert isinstance(created, InstanceCreated) and created.instance.context_length == 1024


def test_a_gpu_node_holds_the_weights_as_stored_and_a_half_precision_cache() -> None:
    cpu = required_bytes(CARD, 0, 30, accelerator="cpu")
    gpu = required_bytes(CARD, 0, 30, accelerator="cuda")
    assert gpu < cpu
    head_dim = CARD.hidden_size // CARD.num_heads
    kv = 2 * 30 * CARD.num_kv_heads * head_dim * CARD.context_length * 2
    assert gpu == int(CARD.weight_bytes + kv) + HEADROOM_BYTES


def hub_card(layers: int = 4) -> ModelCard:
    """A 4-bit hub model as `exo.models.hub` reads it: 25 MB a layer, 100 MB shared."""
    return ModelCard(
        ModelId("org/tiny-4bit"), "tiny-4bit", "hub", "org/tiny-4bit", layers, 256, 4, 2,
        1000, 4096, weight_bytes=layers * 25_000_000 + 100_000_000,
        loaded_bytes=8 * (layers * 25_000_000 + 100_000_000), architecture="qwen3",
        revision="c" * 40, layer_bytes=(25_000_000,) * layers, shared_bytes=100_000_000,
    )  # fmt: skip


def test_a_hub_model_is_added_once_and_then_placed_from_its_card_in_the_state() -> None:
    state = state_with(a=8, b=8)
    card = hub_card()
    assert isinstance(decide(state, envelope(PlaceInstance(card.model_id))), Rejected)
    (added,) = decide(state, envelope(AddModel(card)))  # type: ignore[misc]
    assert added == ModelAdded(card)
    state = apply(state, IndexedEvent(state.last_index + 1, 1, added))
    assert dict(state.models) == {card.model_id: card}
    # The first card read wins: every node fetches the revision it names.
    newer = attrs.evolve(card, revision="d" * 40)
    assert decide(state, envelope(AddModel(newer))) == []
    # The bundled model needs no card in the state.
    assert decide(state, envelope(AddModel(attrs.evolve(card, model_id=BUNDLED_MODEL)))) == []
    (created,) = decide(state, envelope(PlaceInstance(card.model_id)))  # type: ignore[misc]
    assert isinstance(created, InstanceCreated)
    assert [(s.start_layer, s.end_layer) for s in created.instance.shards] == [(0, 4)]
    # Each rank's memory: its layers and the shared tensors, widened to float32 on CPU.
    placement = place(state, card, "pipeline", 2)
    assert [(s.start_layer, s.end_layer) for s in placement.shards] == [(0, 2), (2, 4)]
    first = placement.memory_by_node[placement.shards[0].node_id]
    assert first == required_bytes(card, 0, 2)
    assert card.float32_bytes(0, 2) == 8 * (2 * 25_000_000 + 100_000_000)
    # The instance records the context its memory was planned for.
    assert created.instance.context_length == 4096


def test_architectures_exo_cannot_shard_are_refused_across_nodes_but_run_on_one() -> None:
    state = state_with(a=8, b=8)
    phi3 = attrs.evolve(hub_card(), architecture="phi3", model_id=ModelId("org/phi"))
    with pytest.raises(PlacementError, match="mlx-lm has no tensor-parallel sharding"):
        place(state, phi3, "tensor", 2, (NodeId("a"), NodeId("b")))
    assert len(place(state, phi3, "pipeline", 2, (NodeId("a"), NodeId("b"))).shards) == 2
    hybrid = attrs.evolve(hub_card(), architecture="qwen3_next", model_id=ModelId("org/next"))
    with pytest.raises(PlacementError, match="'qwen3_next' cannot be pipeline-sharded"):
        place(state, hybrid, "pipeline", 2, (NodeId("a"), NodeId("b")))
    assert len(place(state, hybrid, "pipeline").shards) == 1


def test_a_mixture_of_experts_model_keeps_its_weights_as_stored_on_cpu() -> None:
    moe = attrs.evolve(hub_card(), num_experts=8, experts_per_token=2, architecture="qwen3_moe")
    placement = place(state_with(a=8), moe, "pipeline")
    (shard,) = placement.shards
    assert shard.keep_quantized
    assert placement.memory_by_node[NodeId("a")] == required_bytes(moe, 0, 4, keep_quantized=True)


def test_a_retry_decided_after_its_outcome_was_forgotten_keeps_the_live_instance() -> None:
    state = state_with(a=8)
    (created,) = decide(state, envelope(PlaceInstance(BUNDLED_MODEL), cid="cmd-9"))  # type: ignore[misc]
    state = apply(state, IndexedEvent(state.last_index + 1, 1, created))
    # The master remembers a bounded number of outcomes; the same command again, after
    # its outcome was evicted, decides nothing rather than replacing the instance.
    assert decide(state, envelope(PlaceInstance(BUNDLED_MODEL), cid="cmd-9")) == []


def test_requests_end_with_the_node_that_took_them_and_with_their_instance() -> None:
    """Gauges go with the node that reported them and with their instance; per-request
    records from older logs are failed the same way."""
    state = state_with(a=8, b=8)
    (created,) = decide(state, envelope(PlaceInstance(BUNDLED_MODEL, nodes=(NodeId("a"),))))  # type: ignore[misc]
    assert isinstance(created, InstanceCreated)
    iid = created.instance.instance_id
    state = apply(state, IndexedEvent(state.last_index + 1, 1, created))
    state = apply(state, IndexedEvent(state.last_index + 1, 1, MasterElected(NodeId("a"), 1)))
    for rid, origin in (("r-a", "a"), ("r-b", "b")):
        legacy = RequestStarted(RequestRecord(RequestId(rid), iid, NodeId(origin), BUNDLED_MODEL))
        state = apply(state, IndexedEvent(state.last_index + 1, 1, legacy))
        (tallied,) = decide(state, envelope(ReportRequests((RequestTally(iid, 2),)), origin, rid))  # type: ignore[misc]
        state = apply(state, IndexedEvent(state.last_index + 1, 1, tallied))
    assert set(state.in_flight) == {"a", "b"}
    # Node b, whose API took r-b, is lost: r-b is failed and b's gauge goes.
    lost_b = decide(state, envelope(MarkNodeDown(NodeId("b")), "a", "down-b"))
    assert isinstance(lost_b, list)
    assert [type(e).__name__ for e in lost_b] == ["NodeDown", "RequestFailed"]
    after = state
    for event in lost_b:
        after = apply(after, IndexedEvent(after.last_index + 1, 1, event))
    assert set(after.requests) == {"r-a"} and set(after.in_flight) == {"a"}
    assert after.request_counters[iid].failed == 1
    # A report from the node marked down counts what ended but keeps no gauge.
    late = decide(after, envelope(ReportRequests((RequestTally(iid, 1, 1),)), "b", "late"))
    for event in late:  # type: ignore[union-attr]
        after = apply(after, IndexedEvent(after.last_index + 1, 1, event))
    assert set(after.in_flight) == {"a"} and after.request_counters[iid].finished == 1
    # Deleting the instance ends what ran on it.
    deleted = decide(after, envelope(DeleteInstance(iid), "a", "del"))
    assert isinstance(deleted, list)
    assert [type(e).__name__ for e in deleted] == ["RequestFailed", "InstanceDeleted"]
    for event in deleted:
        after = apply(after, IndexedEvent(after.last_index + 1, 1, event))
    assert not after.requests and not after.in_flight


def test_instances_not_loaded_yet_count_against_their_node() -> None:
    state = state_with(a=1.8)
    placed = []
    for cid in ("p1", "p2", "p3"):
        decision = decide(state, envelope(PlaceInstance(BUNDLED_MODEL), cid=cid))
        if isinstance(decision, Rejected):
            placed.append(decision.reason)
            continue
        (created,) = decision
        assert isinstance(created, InstanceCreated)
        placed.append(created.instance.shards[0].keep_quantized)
        state = apply(state, IndexedEvent(state.last_index + 1, 1, created))
    # The first fits in float32; the second only as stored, beside the first; the third
    # not at all, though the node's own report still says 1.8 GiB free.
    assert placed[:2] == [False, True]
    assert isinstance(placed[2], str) and "needs" in placed[2], placed
    # A loaded runner shows in the node's own report: it is no longer counted twice.
    first = next(iter(sorted(state.instances)))
    ready = RunnerStatusChanged(InstanceId(first), NodeId("a"), RunnerStatus("ready"))
    loaded = apply(state, IndexedEvent(state.last_index + 1, 1, ready))
    assert committed_bytes(loaded, NodeId("a")) < committed_bytes(state, NodeId("a"))
