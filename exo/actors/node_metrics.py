"""The gauges a node reports at each scrape of `GET /metrics`, read from the replicated
state (the same on every node once in sync) and from this node's own runners (facts
never replicated: requests in flight and queued, the batch size).

Read at scrape time rather than kept up to date event by event: a scrape is rare
(seconds apart), the state is an immutable value, and nothing here can drift from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exo.actors.control import ControlStatistics
from exo.actors.runners import RunnerSupervisor
from exo.events.ids import NodeId
from exo.events.state import State


def state_metrics(
    node_id: NodeId,
    state: Callable[[], State],
    runners: RunnerSupervisor,
    control: Callable[[], ControlStatistics] | None = None,
) -> Callable[[], Iterator[Metric]]:
    """A collect function for `NodeMetrics.add_collector`; `control`: the control actor's
    statistics (its elections and log repairs), where there is one."""

    def collect() -> Iterator[Metric]:
        current = state()  # one state for the whole scrape
        yield from _log(node_id, current)
        if control is not None:
            yield from _control(control())
        yield from _nodes(current)
        yield from _instances(current)
        yield from _downloads(current)
        yield from _links(current)
        yield from _local_runners(runners)

    return collect


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels or [])


def _log(node_id: NodeId, state: State) -> Iterator[Metric]:
    index = _gauge("exo_log_index", "Index of the last event this node applied.")
    index.add_metric([], state.last_index)
    term = _gauge("exo_term", "The election term of the log this node follows.")
    term.add_metric([], state.term)
    master = _gauge("exo_is_master", "1 where this node is the master of the current term.")
    master.add_metric([], 1 if state.master == node_id else 0)
    adopted = _gauge(
        "exo_adopted_terms", "Deposed terms whose divergent log suffix this log adopted."
    )
    adopted.add_metric([], len(state.adopted))
    yield from (index, term, master, adopted)


def _control(statistics: ControlStatistics) -> Iterator[Metric]:
    won = CounterMetricFamily(
        "exo_elections_won", "Terms this node took office as master (since it started)."
    )
    won.add_metric([], statistics.elections)
    truncated = CounterMetricFamily(
        "exo_truncated_events", "Events this node's log cut back to agree with a new master."
    )
    truncated.add_metric([], statistics.truncated_events)
    adopted = CounterMetricFamily(
        "exo_adopted_commands",
        "Commands that offered this node's divergent events of a deposed term to a new master.",
    )
    adopted.add_metric([], statistics.adopted_commands)
    synced = GaugeMetricFamily("exo_synced", "1 while this node holds the master's log.")
    synced.add_metric([], 1 if statistics.synced else 0)
    yield from (won, truncated, adopted, synced)


def _nodes(state: State) -> Iterator[Metric]:
    total = _gauge("exo_node_memory_total_bytes", "Memory of each node.", ["node"])
    available = _gauge(
        "exo_node_memory_available_bytes",
        "Memory each node had free at its last profile.",
        ["node"],
    )
    cores = _gauge("exo_node_cpu_cores", "CPU cores of each node.", ["node", "accelerator"])
    for node_id, profile in state.nodes.items():
        total.add_metric([node_id], profile.memory_total)
        available.add_metric([node_id], profile.memory_available)
        cores.add_metric([node_id, profile.accelerator], profile.cpu_cores)
    count = _gauge("exo_nodes", "Nodes in the cluster (profiled and not reported down).")
    count.add_metric([], len(state.nodes))
    yield from (count, total, available, cores)


def _instances(state: State) -> Iterator[Metric]:
    instances = _gauge(
        "exo_instance_shards",
        "Instances, by model and strategy: their shard count.",
        ["instance", "model", "strategy"],
    )
    for instance_id, instance in state.instances.items():
        instances.add_metric([instance_id, instance.model, instance.strategy], len(instance.shards))
    runners = _gauge(
        "exo_runner_status",
        "1 for each runner's current phase (starting, loading, ready, running, failed ...).",
        ["instance", "node", "phase"],
    )
    restarts = _gauge("exo_runner_restarts", "Restarts of each runner.", ["instance", "node"])
    for instance_id, by_node in state.runners.items():
        for node_id, status in by_node.items():
            runners.add_metric([instance_id, node_id, status.phase], 1)
            restarts.add_metric([instance_id, node_id], status.restarts)
    finished = _gauge(
        "exo_instance_requests_finished", "Requests each instance finished.", ["instance"]
    )
    failed = _gauge("exo_instance_requests_failed", "Requests each instance failed.", ["instance"])
    for instance_id, counters in state.request_counters.items():
        finished.add_metric([instance_id], counters.finished)
        failed.add_metric([instance_id], counters.failed)
    yield from (instances, runners, restarts, finished, failed)


def _downloads(state: State) -> Iterator[Metric]:
    done = _gauge(
        "exo_download_bytes",
        "Bytes of each model each node holds or has fetched so far.",
        ["node", "model", "phase"],
    )
    total = _gauge("exo_download_total_bytes", "Bytes each download needs.", ["node", "model"])
    rate = _gauge(
        "exo_download_rate_bytes_per_second",
        "Recent rate of downloads in progress.",
        ["node", "model"],
    )
    for node_id, models in state.downloads.items():
        for model, status in models.items():
            done.add_metric([node_id, model, status.phase], status.bytes_done)
            total.add_metric([node_id, model], status.bytes_total)
            rate.add_metric([node_id, model], status.rate)
    yield from (done, total, rate)


def _links(state: State) -> Iterator[Metric]:
    latency = _gauge(
        "exo_link_latency_seconds", "Measured round-trip latency of each link.", ["from", "to"]
    )
    bandwidth = _gauge(
        "exo_link_bandwidth_bytes_per_second", "Measured bandwidth of each link.", ["from", "to"]
    )
    for source, peers in state.links.items():
        for peer, stats in peers.items():
            latency.add_metric([source, peer], stats.latency_us / 1e6)
            if stats.bandwidth_bps is not None:
                bandwidth.add_metric([source, peer], stats.bandwidth_bps / 8)
    yield from (latency, bandwidth)


def _local_runners(runners: RunnerSupervisor) -> Iterator[Metric]:
    in_flight = _gauge(
        "exo_runner_requests",
        "Requests this node's runner holds: decoding and queued.",
        ["instance"],
    )
    queued = _gauge(
        "exo_runner_queued_requests", "Requests waiting beyond the runner's batch.", ["instance"]
    )
    batch = _gauge("exo_runner_batch_size", "Sequences the runner decodes at once.", ["instance"])
    for instance_id, handle in runners.handles.items():
        in_flight.add_metric([instance_id], handle.in_flight)
        queued.add_metric([instance_id], max(0, handle.in_flight - handle.concurrency))
        batch.add_metric([instance_id], handle.concurrency)
    yield from (in_flight, queued, batch)
