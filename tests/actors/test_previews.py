from exo.actors.placement import place
from exo.actors.previews import (
    best_placement,
    link_latency,
    predicted_tokens_per_second,
    previews,
)
from exo.events.events import IndexedEvent, LinksMeasured, NodeProfiled
from exo.events.facts import LinkStats, ModelCard, NodeProfile
from exo.events.ids import ModelId, NodeId
from exo.events.state import State, apply
from exo.models.cards import BUNDLED_MODEL, CARDS

GIB = 2**30
CARD = CARDS[BUNDLED_MODEL]
A, B, C, D = NodeId("a"), NodeId("b"), NodeId("c"), NodeId("d")


def cluster(
    links: dict[tuple[NodeId, NodeId], int] | None = None, free: tuple[float, ...] = (16, 12, 8)
) -> State:
    state = State()
    events: list[object] = [
        NodeProfiled(n, NodeProfile("h", "linux-x86_64", 4, 128 * GIB, int(gib * GIB), "cpu", 1, 2))
        for n, gib in zip((A, B, C), free, strict=False)
    ]
    by_source: dict[NodeId, list[LinkStats]] = {}
    for (x, y), latency in (links or {}).items():
        by_source.setdefault(x, []).append(LinkStats(y, latency))
    for x, stats in sorted(by_source.items()):
        events.append(LinksMeasured(x, tuple(stats)))  # a report replaces the node's last
    for index, event in enumerate(events, start=1):
        state = apply(state, IndexedEvent(index, 1, event))  # type: ignore[arg-type]
    return state


def test_every_strategy_and_size_is_a_candidate_with_a_reason_when_invalid() -> None:
    candidates = previews(cluster(), CARD)
    assert [(p.strategy, p.node_count) for p in candidates] == [
        ("pipeline", 1),
        ("pipeline", 2),
        ("pipeline", 3),
        ("tensor", 1),
        ("tensor", 2),
        ("tensor", 3),
    ]
    by_kind = {(p.strategy, p.node_count): p for p in candidates}
    assert by_kind[("tensor", 2)].reason == "9 attention heads do not divide by 2 nodes"
    assert not by_kind[("tensor", 2)].valid and by_kind[("tensor", 2)].shards == ()
    assert by_kind[("tensor", 3)].valid  # 9 heads, 3 KV heads and 576 divide by 3
    single = by_kind[("pipeline", 1)]
    # One CPU node: 540 MB of float32 weights read per token at 20 GB/s.
    assert single.predicted_tokens_per_second == round(20e9 / CARD.loaded_bytes, 2)
    assert [s.node_id for s in single.shards] == [A]  # the most free memory


def test_more_hops_predict_slower_decoding() -> None:
    state = cluster()
    speeds = [
        p.predicted_tokens_per_second for p in previews(state, CARD) if p.strategy == "pipeline"
    ]
    assert speeds[0] is not None and speeds[1] is not None and speeds[2] is not None
    assert speeds[0] > speeds[1] > speeds[2]


def test_rank_order_follows_the_fastest_links() -> None:
    # a-c is fast, a-b slow: the chain goes a, c, b rather than by memory (a, b, c).
    state = cluster({(A, C): 100, (A, B): 5000, (B, C): 200})
    three = next(p for p in previews(state, CARD) if (p.strategy, p.node_count) == ("pipeline", 3))
    assert [s.node_id for s in three.shards] == [A, C, B]
    assert link_latency(state, C, A) == 100 / 2e6  # either direction's measurement
    slow = place(state, CARD, "pipeline", 3, (A, B, C))
    fast = place(state, CARD, "pipeline", 3, (A, C, B))
    assert predicted_tokens_per_second(state, CARD, fast) >= predicted_tokens_per_second(
        state, CARD, slow
    )


def hub_card(
    repo: str, layers: int, hidden: int, heads: int, kv: int, context: int, gb: float
) -> ModelCard:
    """A 4-bit hub model's card as `exo.models.hub` reads it (figures of its config.json)."""
    stored = int(gb * 1e9)
    return ModelCard(
        ModelId(repo), repo, "hub", repo, layers, hidden, heads, kv, 128256, context,
        weight_bytes=stored, loaded_bytes=int(stored * 8 * 4 / 4.5), head_dim=hidden // heads,
    )  # fmt: skip


LLAMA_8B = hub_card("mlx-community/Meta-Llama-3.1-8B-Instruct-4bit", 32, 4096, 32, 8, 131072, 4.5)
DEEPSEEK_V3 = hub_card("mlx-community/DeepSeek-V3-0324-4bit", 61, 7168, 128, 128, 163840, 378)


def test_hub_models_can_be_previewed_and_a_4bit_8b_fits_a_24_gib_cpu_node() -> None:
    llama = LLAMA_8B
    by_kind = {(p.strategy, p.node_count): p for p in previews(cluster(free=(40, 40, 40)), llama)}
    assert by_kind[("pipeline", 1)].valid
    assert by_kind[("tensor", 2)].valid  # 32 heads, 8 KV heads, 4096 all divide by 2
    assert not by_kind[("tensor", 3)].valid
    assert by_kind[("tensor", 3)].reason == "32 attention heads do not divide by 3 nodes"
    # On a 24 GiB CPU node (20 GiB free) float32 (32 GB) does not fit: it stays 4-bit,
    # with a half-precision cache for the default 32k tokens of context.
    one = {(p.strategy, p.node_count): p for p in previews(cluster(free=(20,)), llama)}
    single = one[("pipeline", 1)]
    assert single.valid and single.shards[0].keep_quantized
    assert single.memory_by_node[A] < 10 * GIB
    assert not any(p.valid for p in previews(cluster(), DEEPSEEK_V3))
    assert "free, needs" in previews(cluster(), DEEPSEEK_V3)[2].reason


def test_the_master_picks_the_fastest_predicted_placement() -> None:
    # Equal CPU nodes, slow links: one node is fastest (no hops); ties go to fewer nodes.
    slow = cluster({(A, B): 5000, (B, C): 5000, (A, C): 5000}, free=(8, 8, 8))
    assert [s.node_id for s in best_placement(slow, CARD, "pipeline").shards] == [A]
    assert len(best_placement(slow, CARD, "tensor").shards) == 1
    # Fast links make three tensor ranks, each reading a third of the weights, fastest.
    fast = cluster({(A, B): 20, (B, C): 20, (A, C): 20}, free=(8, 8, 8))
    assert len(best_placement(fast, CARD, "tensor").shards) == 3
    # A GPU node with less free memory beats the CPU node with the most.
    gpu = NodeProfile("h", "linux", 4, 128 * GIB, 4 * GIB, "cuda", 1, 2)
    with_gpu = apply(slow, IndexedEvent(slow.last_index + 1, 1, NodeProfiled(D, gpu)))
    assert [s.node_id for s in best_placement(with_gpu, CARD, "pipeline").shards] == [D]


def test_previews_plan_for_the_context_asked_for() -> None:
    small = cluster(free=(1, 1, 1))
    full = {(p.strategy, p.node_count): p for p in previews(small, CARD)}
    short = {(p.strategy, p.node_count): p for p in previews(small, CARD, context=512)}
    # The whole context fits only with the weights as stored; a short one in float32.
    assert full[("pipeline", 1)].valid and full[("pipeline", 1)].shards[0].keep_quantized
    assert short[("pipeline", 1)].valid and not short[("pipeline", 1)].shards[0].keep_quantized
