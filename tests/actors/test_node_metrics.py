"""The gauges a node computes from the replicated state at scrape time, read back with
prometheus_client's parser; and the Grafana dashboard in docs reads only metrics exo
exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families

from exo.actors.control import ControlStatistics
from exo.actors.node_metrics import state_metrics
from exo.events.events import IndexedEvent, LinksMeasured, NodeProfiled
from exo.events.facts import LinkStats, NodeProfile
from exo.events.ids import NodeId
from exo.events.state import State, apply
from exo.metrics import NodeMetrics

A, B = NodeId("node-aaaaaaaaaaaa"), NodeId("node-bbbbbbbbbbbb")
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "exo-dashboard.json"


def profile(memory: int) -> NodeProfile:
    return NodeProfile("host", "linux-x86_64", 2, memory, memory // 2, "cpu", 52415, 52416)


STATISTICS = ControlStatistics(
    None, leading=True, synced=True, elections=2, truncated_events=5, adopted_commands=1
)


def node_metrics(state: State, handles: dict[str, Any] | None = None) -> NodeMetrics:
    metrics = NodeMetrics()
    runners = cast(Any, SimpleNamespace(handles=handles or {}))
    metrics.add_collector(state_metrics(A, lambda: state, runners, lambda: STATISTICS))
    return metrics


def scrape(metrics: NodeMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def test_gauges_read_the_state_and_this_nodes_runners() -> None:
    state = State()
    for index, event in enumerate(
        [
            NodeProfiled(A, profile(16 * 2**30)),
            NodeProfiled(B, profile(8 * 2**30)),
            LinksMeasured(A, (LinkStats(B, 1500, 800_000_000),)),
        ],
        start=1,
    ):
        state = apply(state, IndexedEvent(index, 2, event))
    handle = SimpleNamespace(in_flight=11, concurrency=8)
    found = scrape(node_metrics(state, {"inst-1": handle}))
    assert found[("exo_log_index", frozenset())] == 3
    assert found[("exo_term", frozenset())] == 2
    assert found[("exo_elections_won_total", frozenset())] == 2
    assert found[("exo_truncated_events_total", frozenset())] == 5
    assert found[("exo_adopted_commands_total", frozenset())] == 1
    assert found[("exo_synced", frozenset())] == 1
    assert found[("exo_nodes", frozenset())] == 2
    assert found[("exo_node_memory_total_bytes", frozenset({("node", B)}))] == 8 * 2**30
    link = frozenset({("from", A), ("to", B)})
    assert found[("exo_link_latency_seconds", link)] == 0.0015
    assert found[("exo_link_bandwidth_bytes_per_second", link)] == 100_000_000
    instance = frozenset({("instance", "inst-1")})
    assert found[("exo_runner_requests", instance)] == 11
    assert found[("exo_runner_queued_requests", instance)] == 3
    assert found[("exo_runner_batch_size", instance)] == 8


def test_the_grafana_dashboard_reads_only_metrics_exo_exports() -> None:
    exported = {family.name for family in node_metrics(State()).registry.collect()}
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for expr in expressions
        for name in re.findall(r"\bexo_[a-z_]+", expr)
    }
    assert used and used <= exported, sorted(used - exported)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
