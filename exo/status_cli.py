"""`exo status`: the cluster as one node sees it, in a terminal (for people on SSH) or as
JSON (for scripts): nodes, the master and its term, links, instances with their shards
and runners, downloads. Read from any node's `GET /state`; nothing else is asked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

import httpx

from exo.api.access import KEY_HINT, add_client_key_flag, client_headers

DEFAULT_URL = "http://127.0.0.1:52415"
GIB = 1024**3


def add_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="the cluster as a node sees it: nodes, links, instances")
    status.add_argument(
        "--url",
        default=os.environ.get("EXO_URL", DEFAULT_URL),
        help="any node's API (env EXO_URL; default %(default)s)",
    )
    status.add_argument("--json", action="store_true", help="the summary as JSON, for scripts")
    add_client_key_flag(status)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the summary to `out` (sys.stdout as it is when called); 1 if no node answers."""
    url = args.url.rstrip("/")
    try:
        response = httpx.get(f"{url}/state", headers=client_headers(args.api_key), timeout=10)
        if response.status_code == 401:
            print(f"exo status: {url}/state: 401: {KEY_HINT}", file=sys.stderr)
            return 1
        response.raise_for_status()
        view = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"exo status: cannot read {url}/state: {exc}", file=sys.stderr)
        return 1
    summary = summarize(view)
    text = json.dumps(summary, indent=2) + "\n" if args.json else render(summary)
    (out or sys.stdout).write(text)
    return 0


def summarize(view: dict[str, Any]) -> dict[str, Any]:
    """What `exo status` shows, from a `GET /state` answer."""
    state = view["state"]
    master = view.get("master")
    nodes = [
        {
            "id": node_id,
            "master": node_id == master,
            "hostname": profile["hostname"],
            "platform": profile["platform"],
            "accelerator": profile["accelerator"],
            "cpu_cores": profile["cpu_cores"],
            "memory_total": profile["memory_total"],
            "memory_available": profile["memory_available"],
            "worker": profile.get("worker", True),
        }
        for node_id, profile in sorted(state.get("nodes", {}).items())
    ]
    links = [
        {
            "from": source,
            "to": peer,
            "latency_ms": stats["latency_us"] / 1000,
            "bandwidth_bps": stats.get("bandwidth_bps"),
        }
        for source, peers in sorted(state.get("links", {}).items())
        for peer, stats in sorted(peers.items())
    ]
    in_flight: dict[str, int] = {}
    for by_instance in state.get("in_flight", {}).values():
        for instance_id, count in by_instance.items():
            in_flight[instance_id] = in_flight.get(instance_id, 0) + count
    instances = []
    for instance_id, instance in sorted(state.get("instances", {}).items()):
        runners = state.get("runners", {}).get(instance_id, {})
        shards = [
            {
                "node": shard["node_id"],
                "rank": shard["rank"],
                "layers": [shard["start_layer"], shard["end_layer"]],
                "runner": runners.get(shard["node_id"], {}).get("phase", "absent"),
            }
            for shard in sorted(instance["shards"], key=lambda s: s["rank"])
        ]
        counters = state.get("request_counters", {}).get(instance_id, {})
        instances.append(
            {
                "id": instance_id,
                "model": instance["model"],
                "strategy": instance["strategy"],
                "shards": shards,
                "in_flight": in_flight.get(instance_id, 0),
                "finished": counters.get("finished", 0),
                "failed": counters.get("failed", 0),
            }
        )
    downloads = [
        {
            "node": node_id,
            "model": model,
            "phase": status["phase"],
            "bytes_done": status.get("bytes_done", 0),
            "bytes_total": status.get("bytes_total", 0),
            "rate": status.get("rate", 0),
        }
        for node_id, models in sorted(state.get("downloads", {}).items())
        for model, status in sorted(models.items())
    ]
    return {
        "node": view.get("node_id"),
        "master": master,
        "term": view.get("term"),
        "index": view.get("index"),
        "nodes": nodes,
        "links": links,
        "instances": instances,
        "downloads": downloads,
    }


def render(summary: dict[str, Any]) -> str:
    """The summary as text for a terminal."""
    lines = [
        f"cluster: master {summary['master'] or 'none'}, term {summary['term']}, "
        f"index {summary['index']}; asked {summary['node']}",
        "",
        f"nodes ({len(summary['nodes'])})",
    ]
    for node in summary["nodes"]:
        role = "master" if node["master"] else ("worker" if node["worker"] else "coordinator")
        lines.append(
            f"  {node['id']}  {role:<11} {node['hostname']}  {node['platform']}  "
            f"{node['accelerator']}  {node['cpu_cores']} cores  memory "
            f"{node['memory_available'] / GIB:.1f} of {node['memory_total'] / GIB:.1f} GiB free"
        )
    lines += ["", f"links ({len(summary['links'])})"]
    for link in summary["links"]:
        bandwidth = link["bandwidth_bps"]
        speed = f"{bandwidth / 1e6:.0f} Mbit/s" if bandwidth else "bandwidth not measured yet"
        lines.append(f"  {link['from']} -> {link['to']}  {link['latency_ms']:.2f} ms  {speed}")
    lines += ["", f"instances ({len(summary['instances'])})"]
    for instance in summary["instances"]:
        lines.append(
            f"  {instance['id']}  {instance['model']}  {instance['strategy']}  "
            f"in flight {instance['in_flight']}, finished {instance['finished']}, "
            f"failed {instance['failed']}"
        )
        for shard in instance["shards"]:
            start, end = shard["layers"]
            lines.append(
                f"    rank {shard['rank']}  {shard['node']}  layers [{start}, {end})  "
                f"runner {shard['runner']}"
            )
    lines += ["", f"downloads ({len(summary['downloads'])})"]
    for download in summary["downloads"]:
        total = download["bytes_total"]
        done = download["bytes_done"]
        share = f" ({100 * done / total:.0f}%)" if total else ""
        rate = ""
        if download["phase"] == "downloading" and download["rate"]:
            left = max(0, total - done) / download["rate"]
            rate = f", {download['rate'] / 1e6:.1f} MB/s, {left:.0f} s left"
        lines.append(
            f"  {download['node']}  {download['model']}  {download['phase']}  "
            f"{done / 1e6:.1f} of {total / 1e6:.1f} MB{share}{rate}"
        )
    return "\n".join(lines) + "\n"
