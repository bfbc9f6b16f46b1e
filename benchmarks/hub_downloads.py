"""Hub downloads: throughput against huggingface_hub's own snapshot_download, the bytes a
3-node pipeline takes from the hub, and the time from a first request to its first token.

Everything runs against the local server that speaks the hub's protocol
(`tests/hub/server.py`) on 127.0.0.1, serving the bundled model re-saved as a 3-file
safetensors repo (102 MB), in one process environment and session, so ratios compare
like with like.

    .venv/bin/python benchmarks/hub_downloads.py [--reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai

from exo.models.hub_client import HubClient
from tests.hub.repos import bundled_repo
from tests.hub.server import HubServer
from tests.integration.nodes import NodeProcess, agreement, start_cluster, wait_for

REPO = "bench/SmolLM2-135M-Instruct-4bit"


def throughput(hub: HubServer, work: Path, reps: int) -> dict[str, Any]:
    """MB/s of exo's download path and of snapshot_download, alternating, fresh caches."""
    from huggingface_hub import snapshot_download

    size = sum(p.stat().st_size for p in hub.repo_dir(REPO).iterdir())
    card = HubClient(cache_dir=work / "card", endpoint=hub.url).describe(REPO)
    files = (*card.support_files, *(f.name for f in card.weight_files))
    exo_times: list[float] = []
    hf_times: list[float] = []
    for rep in range(reps):
        for which in ("hf", "exo") if rep % 2 == 0 else ("exo", "hf"):
            cache = work / f"{which}-{rep}"
            started = time.perf_counter()
            if which == "hf":
                snapshot_download(REPO, cache_dir=cache, endpoint=hub.url)
                hf_times.append(time.perf_counter() - started)
            else:
                HubClient(cache_dir=cache, endpoint=hub.url).download(card, files, lambda _: None)
                exo_times.append(time.perf_counter() - started)
    exo_s, hf_s = statistics.median(exo_times), statistics.median(hf_times)
    return {
        "repo_bytes": size,
        "exo_seconds": round(exo_s, 3),
        "snapshot_download_seconds": round(hf_s, 3),
        "exo_MBps": round(size / exo_s / 1e6, 1),
        "snapshot_download_MBps": round(size / hf_s / 1e6, 1),
        "ratio": round(hf_s / exo_s, 3),
    }


def pipeline_bytes(hub: HubServer, work: Path, models_dir: Path) -> dict[str, Any]:
    """Bytes the hub served a 3-node pipeline, and what each node holds vs its share."""
    nodes = start_cluster(work / "cluster", models_dir, 3, env=hub.client_env())
    try:
        wait_for(lambda: agreement(nodes, 3), 60, "one cluster")
        hub.reset_counters()
        instance = wait_for(lambda: _place(nodes[0], {"model": REPO, "min_nodes": 3}), 60, "placed")
        wait_for(
            lambda: nodes[0].get(f"/instances/{instance['id']}")["status"] == "ready" or None,
            300,
            "ready",
        )
        card = next(m for m in nodes[0].get("/models")["models"] if m["id"] == REPO)["card"]
        size = sum(p.stat().st_size for p in hub.repo_dir(REPO).iterdir())
        per_node = []
        by_id = {n.state()["node_id"]: i for i, n in enumerate(nodes)}
        for shard in instance["shards"]:
            index = by_id[shard["node_id"]]
            cache = work / "cluster" / f"hf{index}" / "hub"
            held = sum(p.stat().st_size for p in cache.rglob("*.safetensors"))
            share = sum(card["layer_bytes"][shard["start_layer"] : shard["end_layer"]])
            per_node.append(
                {
                    "layers": [shard["start_layer"], shard["end_layer"]],
                    "weight_bytes_held": held,
                    "layer_bytes_share": share,
                    "held_vs_share": round(held / share, 2),
                }
            )
        served = hub.bytes_served(REPO)
        return {
            "repo_bytes": size,
            "hub_bytes_served": served,
            "served_vs_repo": round(served / size, 4),
            "without_peer_copies_would_be": round(
                sum(n["weight_bytes_held"] for n in per_node) / size, 2
            ),
            "nodes": per_node,
        }
    finally:
        for node in nodes:
            node.stop()


def first_token(hub: HubServer, work: Path, models_dir: Path) -> dict[str, Any]:
    """From a chat request for a model this node has never seen to its first token."""
    node = NodeProcess(
        work / "single" / "home",
        models_dir,
        "--preload",
        "",
        env={**hub.client_env(), "HF_HOME": str(work / "single" / "hf")},
    ).start()
    marks: dict[str, float] = {}
    stack = contextlib.ExitStack()
    try:
        client = openai.OpenAI(base_url=node.url + "/v1", api_key="x", max_retries=0)
        stack.callback(client.close)
        started = time.perf_counter()

        def stream() -> None:
            reply = client.chat.completions.create(
                model=REPO,
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                temperature=0,
                max_tokens=8,
                stream=True,
                timeout=300,
            )
            for chunk in reply:
                if chunk.choices and chunk.choices[0].delta.content:
                    marks.setdefault("first_token", time.perf_counter())

        thread = threading.Thread(target=stream)
        thread.start()
        while thread.is_alive():
            state = node.state()["state"]
            now = time.perf_counter()
            if REPO in state["models"]:
                marks.setdefault("card", now)
            downloads = [d.get(REPO) for d in state["downloads"].values()]
            if any(d and d["phase"] == "complete" for d in downloads):
                marks.setdefault("download", now)
            runners = [s for per in state["runners"].values() for s in per.values()]
            if any(r["phase"] in ("ready", "running") for r in runners):
                marks.setdefault("load", now)
            time.sleep(0.02)
        thread.join()
        order = ("card", "download", "load", "first_token")
        out: dict[str, Any] = {}
        last = started
        for name in order:
            out[f"{name}_s"] = round(marks[name] - last, 3)
            last = marks[name]
        out["total_s"] = round(marks["first_token"] - started, 3)
        return out
    finally:
        stack.close()
        node.stop()


def _place(node: NodeProcess, body: dict[str, Any]) -> dict[str, Any] | None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        node.url + "/instances", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 400 and b"measured" in exc.read():
                return None  # links not measured yet
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="exo-bench-hub-") as tmp:
        work = Path(tmp)
        hub = HubServer(work / "hub")
        hub.add_repo(REPO, bundled_repo(work / "repo", files=3))
        with hub:
            results = {
                "throughput": throughput(hub, work / "throughput", args.reps),
                "pipeline_bytes": pipeline_bytes(hub, work, work / "models"),
                "first_token": first_token(hub, work, work / "models"),
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
