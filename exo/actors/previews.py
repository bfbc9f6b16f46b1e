"""Placement previews: every candidate placement of a model on the cluster as it is, with
its memory per node, a predicted decode speed, and why it is invalid when it is.

Pure, like `placement.py`: a function of the state and the model card.

The speed model is deliberately simple. Decoding one token reads every weight once, so a
rank holding a share of the weights needs share / memory bandwidth seconds; a pipeline
runs its ranks one after another and pays one link latency per hop (around the ring,
back to rank 0); tensor parallelism runs the ranks side by side and pays two
all-reduces per layer. Memory bandwidth is not measured yet, so it is a typical figure
for the node's accelerator; link latency is measured (`state.links`), with 1 ms assumed
for a pair not measured yet.
"""

from __future__ import annotations

from attrs import frozen

from exo.actors.placement import (
    Placement,
    PlacementError,
    by_link_order,
    check_node_count,
    link_latency,
    place,
    weight_bytes_held,
    workers_for,
)
from exo.events.facts import Accelerator, Shard, Strategy
from exo.events.ids import NodeId
from exo.events.state import State
from exo.models.cards import ModelCard

# Typical memory bandwidth in bytes per second, by accelerator.
MEMORY_BANDWIDTH: dict[Accelerator, float] = {
    "cpu": 20e9,
    "metal": 200e9,
    "cuda": 2000e9,
}
STRATEGIES: tuple[Strategy, ...] = ("pipeline", "tensor")


@frozen
class Preview:
    strategy: Strategy
    node_count: int
    shards: tuple[Shard, ...]
    memory_by_node: dict[NodeId, int]
    predicted_tokens_per_second: float | None
    valid: bool
    reason: str


def previews(state: State, card: ModelCard, context: int | None = None) -> list[Preview]:
    """One candidate per (strategy, node count), for 1 to every worker node, with memory
    planned for `context` tokens (default: the model's whole context)."""
    workers = workers_for(state, card)
    out: list[Preview] = []
    for strategy in STRATEGIES:
        for count in range(1, max(len(workers), 1) + 1):
            out.append(_preview(state, card, strategy, count, workers, context))
    return out


def best_placement(
    state: State,
    card: ModelCard,
    strategy: Strategy,
    min_nodes: int = 1,
    context: int | None = None,
) -> Placement:
    """The valid placement on at least `min_nodes` workers with the highest predicted
    decode speed; ties go to fewer nodes. Per node count the candidates are the workers
    with the most free memory and those with the fastest accelerator, in link order."""
    workers = workers_for(state, card)
    check_node_count(len(workers), min_nodes)
    best: tuple[float, Placement] | None = None
    reason = ""
    for count in range(min_nodes, len(workers) + 1):
        for subset in _candidate_sets(state, workers, count):
            try:
                placement = place(state, card, strategy, count, subset, context)
            except PlacementError as exc:
                reason = str(exc)
                continue
            speed = predicted_tokens_per_second(state, card, placement)
            if best is None or speed > best[0]:
                best = (speed, placement)
    if best is None:
        raise PlacementError(reason)
    return best[1]


def _candidate_sets(state: State, workers: list[NodeId], count: int) -> list[tuple[NodeId, ...]]:
    fastest = sorted(
        workers, key=lambda n: (-_bandwidth(state, n), -state.nodes[n].memory_available, n)
    )[:count]
    sets = [
        by_link_order(state, _most_memory(state, workers, count)),
        by_link_order(state, fastest),
    ]
    return list(dict.fromkeys(sets))


def _preview(
    state: State,
    card: ModelCard,
    strategy: Strategy,
    count: int,
    workers: list[NodeId],
    context: int | None,
) -> Preview:
    if count > len(workers):
        return Preview(
            strategy,
            count,
            (),
            {},
            None,
            False,
            f"{count} nodes requested, {len(workers)} available",
        )
    try:
        chosen = by_link_order(state, _most_memory(state, workers, count))
        placement = place(state, card, strategy, count, chosen, context)
    except PlacementError as exc:
        return Preview(strategy, count, (), {}, None, False, str(exc))
    speed = predicted_tokens_per_second(state, card, placement)
    return Preview(
        strategy, count, placement.shards, placement.memory_by_node, round(speed, 2), True, ""
    )


def _most_memory(state: State, workers: list[NodeId], count: int) -> list[NodeId]:
    ranked = sorted(workers, key=lambda n: (-state.nodes[n].memory_available, n))
    return ranked[:count]


def predicted_tokens_per_second(state: State, card: ModelCard, placement: Placement) -> float:
    shards = placement.shards
    count = len(shards)
    if placement.strategy == "pipeline":
        compute = sum(held_bytes(state, card, s) / _bandwidth(state, s.node_id) for s in shards)
        hops = count if count > 1 else 0  # around the ring: the token returns to rank 0
        links = sum(
            link_latency(state, shards[i].node_id, shards[(i + 1) % count].node_id)
            for i in range(hops)
        )
        return 1 / (compute + links)
    compute = max(held_bytes(state, card, s) / count / _bandwidth(state, s.node_id) for s in shards)
    if count == 1:
        return 1 / compute
    slowest_link = max(
        link_latency(state, a.node_id, b.node_id) for a in shards for b in shards if a != b
    )
    return 1 / (compute + 2 * card.num_layers * slowest_link)


def held_bytes(state: State, card: ModelCard, shard: Shard) -> int:
    """Weight bytes the shard's runner reads per token, as its node holds them."""
    accelerator = state.nodes[shard.node_id].accelerator
    return weight_bytes_held(
        card, shard.start_layer, shard.end_layer, accelerator, shard.keep_quantized
    )


def _bandwidth(state: State, node_id: NodeId) -> float:
    return MEMORY_BANDWIDTH[state.nodes[node_id].accelerator]
