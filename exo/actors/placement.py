"""Placement: which nodes run which layers of a model. A pure function of state and request.

Memory-aware from the start: a node must hold its share of the weights (as loaded),
its share of the KV cache for the model's full context, and a headroom.
"""

from __future__ import annotations

from attrs import frozen

from exo.events.facts import NodeProfile, Shard, Strategy
from exo.events.ids import NodeId
from exo.events.state import State
from exo.models.cards import ModelCard

HEADROOM_BYTES = 256 * 1024 * 1024
# Runners on CPU compute in float32: 4 bytes per cached key/value element.
KV_BYTES_PER_ELEMENT = 4


class PlacementError(ValueError):
    """No valid placement; the message says why in terms a user can act on."""


@frozen
class Placement:
    strategy: Strategy
    shards: tuple[Shard, ...]
    memory_by_node: dict[NodeId, int]


def kv_cache_bytes(card: ModelCard, layers: int) -> int:
    head_dim = card.hidden_size // card.num_heads
    return 2 * layers * card.num_kv_heads * head_dim * card.context_length * KV_BYTES_PER_ELEMENT


def required_bytes(card: ModelCard, layers: int, fraction_of_width: float = 1.0) -> int:
    """Memory a rank holding `layers` layers (of `fraction_of_width` of each) needs."""
    weights = card.loaded_bytes * layers / card.num_layers
    kv = kv_cache_bytes(card, layers)
    return int((weights + kv) * fraction_of_width) + HEADROOM_BYTES


def place(
    state: State,
    card: ModelCard,
    strategy: Strategy,
    min_nodes: int = 1,
    nodes: tuple[NodeId, ...] | None = None,
) -> Placement:
    """The placement on the fewest nodes (at least `min_nodes`) that fits, or `PlacementError`."""
    candidates = _candidates(state, nodes)
    if not candidates:
        raise PlacementError("no nodes are available to place on")
    if min_nodes < 1:
        raise PlacementError("min_nodes must be at least 1")
    if min_nodes > len(candidates):
        raise PlacementError(f"{min_nodes} nodes requested, {len(candidates)} available")
    reasons: list[str] = []
    for count in range(min_nodes, len(candidates) + 1):
        # Most free memory first, ties broken by id, so the choice is deterministic; nodes
        # named by the caller keep the caller's order (it is the rank order).
        chosen = (
            candidates[:count]
            if nodes is not None
            else sorted(candidates, key=lambda n: (-n[1].memory_available, n[0]))[:count]
        )
        try:
            if strategy == "pipeline":
                return _pipeline(card, chosen)
            return _tensor(card, chosen)
        except PlacementError as exc:
            reasons.append(str(exc))
            if nodes is not None:
                break
    raise PlacementError(reasons[-1])


def _candidates(state: State, nodes: tuple[NodeId, ...] | None) -> list[tuple[NodeId, NodeProfile]]:
    if nodes is None:
        return sorted((n, p) for n, p in state.nodes.items() if p.worker)
    unknown = [n for n in nodes if n not in state.nodes]
    if unknown:
        raise PlacementError(f"unknown nodes: {', '.join(unknown)}")
    coordinators = [n for n in nodes if not state.nodes[n].worker]
    if coordinators:
        raise PlacementError(
            f"coordinator-only nodes (--no-worker) host no runners: {', '.join(coordinators)}"
        )
    return [(n, state.nodes[n]) for n in nodes]


def _pipeline(card: ModelCard, chosen: list[tuple[NodeId, NodeProfile]]) -> Placement:
    if len(chosen) > card.num_layers:
        raise PlacementError(f"{card.num_layers} layers cannot span {len(chosen)} nodes")
    layer_counts = split_layers(card.num_layers, [p.memory_available for _, p in chosen])
    shards: list[Shard] = []
    memory: dict[NodeId, int] = {}
    start = 0
    for rank, ((node_id, profile), layers) in enumerate(zip(chosen, layer_counts, strict=True)):
        need = required_bytes(card, layers)
        _check_fits(node_id, profile, need)
        shards.append(Shard(node_id, rank, start, start + layers))
        memory[node_id] = need
        start += layers
    return Placement("pipeline", tuple(shards), memory)


def _tensor(card: ModelCard, chosen: list[tuple[NodeId, NodeProfile]]) -> Placement:
    count = len(chosen)
    for what, value in (
        ("attention heads", card.num_heads),
        ("KV heads", card.num_kv_heads),
        ("hidden size", card.hidden_size),
    ):
        if value % count:
            raise PlacementError(f"{value} {what} do not divide by {count} nodes")
    shards: list[Shard] = []
    memory: dict[NodeId, int] = {}
    for rank, (node_id, profile) in enumerate(chosen):
        need = required_bytes(card, card.num_layers, 1 / count)
        _check_fits(node_id, profile, need)
        shards.append(Shard(node_id, rank, 0, card.num_layers))
        memory[node_id] = need
    return Placement("tensor", tuple(shards), memory)


def _check_fits(node_id: NodeId, profile: NodeProfile, need: int) -> None:
    if profile.memory_available < need:
        raise PlacementError(
            f"node {node_id} has {_gib(profile.memory_available)} free, needs {_gib(need)}"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def split_layers(num_layers: int, weights: list[int]) -> list[int]:
    """Layers per node in proportion to `weights`, at least one each, summing to `num_layers`.

    Largest-remainder rounding keeps the split deterministic and as fair as integers allow.
    """
    count = len(weights)
    spare = num_layers - count
    total = sum(weights) or count
    shares = (
        [spare * (w or 1) / total for w in weights] if sum(weights) else [spare / count] * count
    )
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(count), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in by_remainder[: spare - sum(counts)]:
        counts[i] += 1
    return [c + 1 for c in counts]
