"""Decode speed and time to first token of the bundled model placed across real nodes.

Three `exo node` processes on 127.0.0.1 (fresh homes, `--peers`, a cluster key). For each
configuration — pipeline on 1, 2 and 3 nodes, tensor on 3 — the instance is placed with
`POST /instances`, and greedy streamed requests go through the official `openai` client
to the API of the node running rank 0. The 3-node pipeline is also asked through the API
of the last rank's node, so the data-plane relay is measured too. Next to each
measurement: the placement model's prediction from `GET /instances/previews`. The
baseline is the 1-node instance, measured first and again last in the same run (the
mean of both, so that drift of the machine during the run shows and cancels).

    .venv/bin/python benchmarks/distributed_nodes.py --reps 5 --tensor-reps 1
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from tests.integration.nodes import NodeProcess, agreement, start_cluster, wait_for
from tests.integration.streams import MODEL, client

PROMPT = "Count from 1 to 300, separated by commas."
TOKENS = 64


def measured_links(nodes: list[NodeProcess]) -> dict[str, Any] | None:
    state = agreement(nodes, len(nodes))
    links = state["state"]["links"] if state else {}
    pairs = [s for per in links.values() for s in per.values() if s["address"]]
    return state if len(pairs) == len(nodes) * (len(nodes) - 1) else None


def place(api: NodeProcess, strategy: str, node_ids: list[str]) -> dict[str, Any]:
    body = {"model": MODEL, "strategy": strategy, "nodes": node_ids}
    created = httpx.post(api.url + "/instances", json=body, timeout=30)
    created.raise_for_status()
    instance_id = created.json()["id"]

    def ready() -> dict[str, Any] | None:
        instance: dict[str, Any] = api.get(f"/instances/{instance_id}")
        return instance if instance["status"] == "ready" else None

    return wait_for(ready, 300, f"{strategy} on {len(node_ids)} nodes ready")


def prediction(api: NodeProcess, strategy: str, count: int) -> float:
    for preview in api.get(f"/instances/previews?model={MODEL}"):
        if preview["strategy"] == strategy and preview["node_count"] == count:
            return float(preview["predicted_tokens_per_second"] or 0.0)
    return 0.0


def one_request(api: NodeProcess) -> tuple[float, float]:
    """(TTFT seconds, decode tokens per second after the first token)."""
    with client(api, timeout=300) as c:
        started = time.perf_counter()
        first = last = 0.0
        tokens = 0
        with c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            temperature=0,
            max_tokens=TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    last = time.perf_counter()
                    first = first or last
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
    assert tokens == TOKENS, tokens
    return first - started, (tokens - 1) / (last - first)


def run_config(
    nodes: list[NodeProcess], ids: list[str], strategy: str, count: int, reps: int
) -> list[dict[str, Any]]:
    """Medians of `reps` requests through each API of one freshly placed instance."""
    entry = nodes[0]
    instance = place(entry, strategy, ids[:count])
    apis = [("rank 0's node", entry)]
    if strategy == "pipeline" and count == 3:
        apis.append(("last rank's node (relayed)", nodes[2]))
    rows = []
    for label, api in apis:
        one_request(api)  # warm: first-request costs are not what this measures
        samples = [one_request(api) for _ in range(reps)]
        rows.append(
            {
                "strategy": strategy,
                "nodes": count,
                "api": label,
                "ttft_s": statistics.median(s[0] for s in samples),
                "decode_tps": statistics.median(s[1] for s in samples),
                "predicted_tps": prediction(entry, strategy, count),
            }
        )
    assert httpx.delete(f"{entry.url}/instances/{instance['id']}", timeout=30).is_success
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="pipeline and tensor across real nodes")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--tensor-reps", type=int, default=1, help="tensor requests (slow on a small machine)"
    )
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nodes = start_cluster(root, root / "models", 3)
        try:
            wait_for(lambda: measured_links(nodes), 60, "a measured 3-node cluster")
            ids = [str(n.state()["node_id"]) for n in nodes]
            rows: list[dict[str, Any]] = []
            for strategy, count in (("pipeline", 1), ("pipeline", 2), ("pipeline", 3)):
                rows += run_config(nodes, ids, strategy, count, args.reps)
            rows += run_config(nodes, ids, "tensor", 3, args.tensor_reps)
            rows += run_config(nodes, ids, "pipeline", 1, args.reps)
            rows[-1]["api"] += " (again, last)"
        finally:
            for node in nodes:
                node.stop(signal.SIGKILL)
    base = (rows[0]["decode_tps"] + rows[-1]["decode_tps"]) / 2
    print("| strategy | nodes | API on | decode tok/s | vs 1 node | predicted | TTFT | per hop |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        hops = row["nodes"] if row["strategy"] == "pipeline" and row["nodes"] > 1 else 0
        per_hop = (1 / row["decode_tps"] - 1 / base) / hops * 1e3 if hops else None
        row["vs_one_node"] = row["decode_tps"] / base
        row["per_hop_ms"] = per_hop
        print(
            f"| {row['strategy']} | {row['nodes']} | {row['api']} | {row['decode_tps']:.2f} "
            f"| {row['vs_one_node']:.3f} | {row['predicted_tps']:.2f} "
            f"| {row['ttft_s'] * 1e3:.0f} ms | {f'{per_hop:.1f} ms' if per_hop else '—'} |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
