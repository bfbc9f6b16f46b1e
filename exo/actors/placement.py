"""Placement: which nodes run which layers of a model. A pure function of state and request.

Memory-aware from the start: a node must hold its share of the weights (as its
accelerator holds them), its share of the KV cache for the requested context (the
model's whole context unless asked for less), and a headroom. Topology-aware:
ranks follow the fastest measured links, and a multi-node instance gets its MLX ring
addresses from where the nodes reach each other (`state.links`).
"""

from __future__ import annotations

from attrs import evolve, frozen
from immutables import Map

from exo.engine.architectures import pipeline_refusal, tensor_refusal
from exo.events.facts import Accelerator, Instance, NodeProfile, Shard, Strategy
from exo.events.ids import NodeId
from exo.events.state import State
from exo.models.cards import ModelCard, card_for

HEADROOM_BYTES = 256 * 1024 * 1024
# One-way latency assumed for a pair of nodes whose link is not measured yet.
UNMEASURED_LATENCY_S = 1e-3
# Ring ports rotate through ring_port + [0, RING_SLOTS): a new instance does not reuse the
# ports of one just deleted (its sockets may linger) nor those of a live one.
RING_SLOTS = 64
# Bytes per cached key/value element: a CPU runner that widened its weights to float32
# caches in float32; one that keeps them quantized, and every GPU runner, in half precision.
KV_BYTES_FLOAT32 = 4
KV_BYTES_HALF = 2
# Tokens of context planned when a placement names none: long-context models (128K)
# would otherwise reserve more KV cache than the weights themselves.
DEFAULT_CONTEXT = 32768


def planned_context(card: ModelCard, context: int | None = None) -> int:
    """The context a placement plans memory for: the one asked for, else the model's
    whole context up to `DEFAULT_CONTEXT` tokens."""
    return context or min(card.context_length, DEFAULT_CONTEXT)


class PlacementError(ValueError):
    """No valid placement; the message says why in terms a user can act on."""


@frozen
class Placement:
    strategy: Strategy
    shards: tuple[Shard, ...]
    memory_by_node: dict[NodeId, int]


def widens(accelerator: Accelerator, keep_quantized: bool) -> bool:
    """Whether a runner holds float32 weights: on CPU, unless told to keep them as stored.

    Why float32 by default on CPU: MLX's CPU backend multiplies float32 through BLAS and
    has no fast quantized kernels; measured on the bundled model, float32 decodes 12-21
    tok/s against 8.5-9 tok/s as stored (`exo/engine/mlx_engine.py`). Quantized is the
    fallback for models whose float32 form does not fit (8x a 4-bit model's size).
    """
    return accelerator == "cpu" and not keep_quantized


def weight_bytes_held(
    card: ModelCard, start: int, end: int, accelerator: Accelerator, keep_quantized: bool
) -> int:
    """Bytes of the weights of layers [start, end) as a runner on `accelerator` holds them."""
    if widens(accelerator, keep_quantized):
        return card.float32_bytes(start, end)
    return card.stored_bytes(start, end)


def kv_cache_bytes(
    card: ModelCard,
    layers: int,
    context: int | None = None,
    accelerator: Accelerator = "cpu",
    keep_quantized: bool = False,
) -> int:
    tokens = planned_context(card, context)
    element = KV_BYTES_FLOAT32 if widens(accelerator, keep_quantized) else KV_BYTES_HALF
    return 2 * layers * card.num_kv_heads * card.kv_head_dim * tokens * element


def required_bytes(
    card: ModelCard,
    start: int,
    end: int,
    fraction_of_width: float = 1.0,
    context: int | None = None,
    accelerator: Accelerator = "cpu",
    keep_quantized: bool = False,
) -> int:
    """Memory a rank holding layers [start, end) (of `fraction_of_width` of each) needs:
    its weights as the runner holds them, its KV cache for `context` tokens, a headroom."""
    weights = weight_bytes_held(card, start, end, accelerator, keep_quantized)
    kv = kv_cache_bytes(card, end - start, context, accelerator, keep_quantized)
    return int((weights + kv) * fraction_of_width) + HEADROOM_BYTES


def fit_rank(
    card: ModelCard,
    node_id: NodeId,
    profile: NodeProfile,
    start: int,
    end: int,
    fraction_of_width: float = 1.0,
    context: int | None = None,
) -> tuple[int, bool]:
    """(bytes needed, keep_quantized) for one rank: float32 on a CPU node when it fits,
    else the weights as stored; `PlacementError` when neither fits.

    Mixture-of-experts models keep their weights as stored on CPU: the engine widens
    plain linear layers only, not the stacked expert layers that hold most of the bytes,
    so planning float32 would reserve memory the runner never uses."""
    need = required_bytes(card, start, end, fraction_of_width, context, profile.accelerator)
    if profile.memory_available >= need and not (card.num_experts and profile.accelerator == "cpu"):
        return need, False
    if profile.accelerator == "cpu":
        stored = required_bytes(
            card, start, end, fraction_of_width, context, profile.accelerator, True
        )
        if profile.memory_available >= stored:
            return stored, True
        need = stored
    raise PlacementError(
        f"node {node_id} has {_gib(profile.memory_available)} free, needs {_gib(need)}"
    )


def place(
    state: State,
    card: ModelCard,
    strategy: Strategy,
    min_nodes: int = 1,
    nodes: tuple[NodeId, ...] | None = None,
    context: int | None = None,
) -> Placement:
    """The placement on the fewest nodes (at least `min_nodes`) that fits, or `PlacementError`.

    `context`: tokens of KV cache to plan for (default: the model's whole context)."""
    if context is not None and not 0 < context <= card.context_length:
        raise PlacementError(
            f"context_length {context} is not within the model's context of "
            f"{card.context_length} tokens"
        )
    candidates = _candidates(state, nodes, card)
    check_node_count(len(candidates), min_nodes)
    reasons: list[str] = []
    for count in range(min_nodes, len(candidates) + 1):
        # Most free memory first, ties broken by id, so the choice is deterministic; nodes
        # named by the caller keep the caller's order (it is the rank order).
        if nodes is not None:
            chosen = candidates[:count]
        else:
            most_memory = sorted(candidates, key=lambda n: (-n[1].memory_available, n[0]))
            order = by_link_order(state, [n for n, _ in most_memory[:count]])
            chosen = [(n, state.nodes[n]) for n in order]
        try:
            if strategy == "pipeline":
                return _pipeline(card, chosen, context)
            return _tensor(card, chosen, context)
        except PlacementError as exc:
            reasons.append(str(exc))
            if nodes is not None:
                break
    raise PlacementError(reasons[-1])


def check_node_count(available: int, min_nodes: int) -> None:
    if not available:
        raise PlacementError("no nodes are available to place on")
    if min_nodes < 1:
        raise PlacementError("min_nodes must be at least 1")
    if min_nodes > available:
        raise PlacementError(f"{min_nodes} nodes requested, {available} available")


def workers_for(state: State, card: ModelCard) -> list[NodeId]:
    """The nodes a model may be placed on: workers, and for a local model only the nodes
    that hold its directory."""
    return sorted(
        n for n, p in state.nodes.items() if p.worker and (not card.hosts or n in card.hosts)
    )


def _candidates(
    state: State, nodes: tuple[NodeId, ...] | None, card: ModelCard
) -> list[tuple[NodeId, NodeProfile]]:
    if nodes is None:
        return [(n, state.nodes[n]) for n in workers_for(state, card)]
    unknown = [n for n in nodes if n not in state.nodes]
    if unknown:
        raise PlacementError(f"unknown nodes: {', '.join(unknown)}")
    coordinators = [n for n in nodes if not state.nodes[n].worker]
    if coordinators:
        raise PlacementError(
            f"coordinator-only nodes (--no-worker) host no runners: {', '.join(coordinators)}"
        )
    elsewhere = [n for n in nodes if card.hosts and n not in card.hosts]
    if elsewhere:
        raise PlacementError(
            f"{card.model_id} is a local directory on {', '.join(card.hosts)} only, not on "
            f"{', '.join(elsewhere)}"
        )
    return [(n, state.nodes[n]) for n in nodes]


def committed_bytes(state: State, node_id: NodeId) -> int:
    """Memory that instances placed on the node will take but its report cannot show
    yet: their runners there are not loaded (starting, loading, restarting, or not
    started while weights arrive). Once a runner is ready the node's own report of free
    memory counts it."""
    total = 0
    for instance in state.instances.values():
        shard = instance.shard_on(node_id)
        if shard is None:
            continue
        runner = state.runner_status(instance.instance_id, node_id)
        if runner is not None and runner.phase in ("ready", "running"):
            continue
        total += shard_bytes(state, instance, shard) or 0
    return total


def shard_bytes(state: State, instance: Instance, shard: Shard) -> int | None:
    """Memory one shard of an instance takes on its node (None: no card for its model)."""
    card = card_for(instance.model, state.models)
    if card is None:
        return None
    profile = state.nodes.get(shard.node_id)
    accelerator = profile.accelerator if profile is not None else "cpu"
    width = 1 / len(instance.shards) if instance.strategy == "tensor" else 1.0
    return required_bytes(
        card,
        shard.start_layer,
        shard.end_layer,
        width,
        instance.context_length,
        accelerator,
        shard.keep_quantized,
    )


def with_commitments(state: State) -> State:
    """The state as placement should see it: each node's free memory less what instances
    placed on it but not loaded yet will take, so quick placements do not overcommit."""
    nodes = {}
    for node_id, profile in state.nodes.items():
        committed = committed_bytes(state, node_id)
        free = max(profile.memory_available - committed, 0)
        nodes[node_id] = evolve(profile, memory_available=free) if committed else profile
    return evolve(state, nodes=Map(nodes))


def sharding_config(card: ModelCard) -> dict[str, object]:
    """The config.json fields the architecture table (`exo.engine.architectures`) reads."""
    return {
        "model_type": card.architecture,
        "num_hidden_layers": card.num_layers,
        "num_attention_heads": card.num_heads,
        "num_key_value_heads": card.num_kv_heads,
    }


def _pipeline(
    card: ModelCard, chosen: list[tuple[NodeId, NodeProfile]], context: int | None
) -> Placement:
    if len(chosen) > card.num_layers:
        raise PlacementError(f"{card.num_layers} layers cannot span {len(chosen)} nodes")
    refusal = pipeline_refusal(sharding_config(card), len(chosen)) if len(chosen) > 1 else None
    if refusal is not None:
        raise PlacementError(refusal)
    layer_counts = split_layers(card.num_layers, [p.memory_available for _, p in chosen])
    shards: list[Shard] = []
    memory: dict[NodeId, int] = {}
    start = 0
    for rank, ((node_id, profile), layers) in enumerate(zip(chosen, layer_counts, strict=True)):
        need, keep_quantized = fit_rank(card, node_id, profile, start, start + layers, 1.0, context)
        shards.append(Shard(node_id, rank, start, start + layers, keep_quantized))
        memory[node_id] = need
        start += layers
    return Placement("pipeline", tuple(shards), memory)


def _tensor(
    card: ModelCard, chosen: list[tuple[NodeId, NodeProfile]], context: int | None
) -> Placement:
    count = len(chosen)
    for what, value in (
        ("attention heads", card.num_heads),
        ("KV heads", card.num_kv_heads),
        ("hidden size", card.hidden_size),
    ):
        if value % count:
            raise PlacementError(f"{value} {what} do not divide by {count} nodes")
    refusal = tensor_refusal(sharding_config(card), count) if count > 1 else None
    if refusal is not None:
        raise PlacementError(refusal)
    shards: list[Shard] = []
    memory: dict[NodeId, int] = {}
    for rank, (node_id, profile) in enumerate(chosen):
        need, keep_quantized = fit_rank(
            card, node_id, profile, 0, card.num_layers, 1 / count, context
        )
        shards.append(Shard(node_id, rank, 0, card.num_layers, keep_quantized))
        memory[node_id] = need
    return Placement("tensor", tuple(shards), memory)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


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


def by_link_order(state: State, nodes: list[NodeId]) -> tuple[NodeId, ...]:
    """Rank order along the fastest links: start at the first node (the most memory), then
    always go to the nearest node not yet in the chain (fewest slow hops)."""
    if len(nodes) <= 2:
        return tuple(nodes)
    chain = [nodes[0]]
    rest = nodes[1:]
    while rest:
        here = chain[-1]
        nearest = min(rest, key=lambda n: (link_latency(state, here, n), n))
        chain.append(nearest)
        rest.remove(nearest)
    return tuple(chain)


def link_latency(state: State, a: NodeId, b: NodeId) -> float:
    """One-way latency in seconds: half the measured round trip (either direction)."""
    for x, y in ((a, b), (b, a)):
        stats = state.links.get(x, {}).get(y)
        if stats is not None:
            return stats.latency_us / 2e6
    return UNMEASURED_LATENCY_S


def ring_addresses(state: State, shards: tuple[Shard, ...], seed: int) -> tuple[str, ...]:
    """ "ip:port" per rank for the MLX ring of a multi-node placement (empty for one node).

    Each rank's IP is where the rank before it reaches its node over their peer link; its
    port is the node's `ring_port` plus a slot that starts at `seed` (the log index, so
    consecutive instances rotate) and skips addresses live instances hold.
    """
    if len(shards) < 2:
        return ()
    hosts = [_ring_host(state, shards[i - 1].node_id, s.node_id) for i, s in enumerate(shards)]
    taken = {address for instance in state.instances.values() for address in instance.ring}
    for attempt in range(RING_SLOTS):
        ring = tuple(
            f"{host}:{state.nodes[s.node_id].ring_port + (seed + attempt + rank) % RING_SLOTS}"
            for rank, (host, s) in enumerate(zip(hosts, shards, strict=True))
        )
        if len(set(ring)) == len(ring) and not taken.intersection(ring):
            return ring
    raise PlacementError(f"no free ring ports: {RING_SLOTS} slots are all in use")


def _ring_host(state: State, before: NodeId, node: NodeId) -> str:
    observers = [before, *sorted(n for n in state.links if n != before)]
    for observer in observers:
        stats = state.links.get(observer, {}).get(node)
        if stats is not None and stats.address:
            return stats.address
    raise PlacementError(f"no address known for node {node}: no peer has measured a link to it")
