"""Placing the model the way a configuration asks, through the node's `/instances` API.

A request is served by any ready instance of its model, so to measure one layout it
must be the only one: other instances of the model are deleted first (which also frees
their memory for the new one), then the layout is placed, waited for, and anything of
the model that appeared meanwhile is deleted again. With a node count, the nodes are
the ones `GET /instances/previews` ranks for that strategy and count, so the instance
has exactly that many (`min_nodes` alone lets the master take more).
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

from exo.bench.client import BenchError, describe_error, error_message
from exo.bench.records import Placement

POLL_S = 0.5


class PlacementError(Exception):
    """This placement cannot be made (the run goes on with the others)."""


async def _call(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        return await http.request(method, path, **kwargs)
    except httpx.HTTPError as error:
        raise BenchError(f"{method} {path} failed: {describe_error(error)}") from None


async def _json(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await _call(http, method, path, **kwargs)
    if response.status_code not in (200, 201):
        raise PlacementError(f"{method} {path}: {error_message(response)}")
    return response.json()


def node_ids(view: dict[str, Any]) -> list[str]:
    """The distinct nodes of an instance or preview, in rank order."""
    ordered = sorted(view.get("shards") or (), key=lambda s: s.get("rank", 0))
    return list(dict.fromkeys(str(s["node_id"]) for s in ordered))


def fits(view: dict[str, Any], placement: Placement) -> bool:
    """Whether an existing instance is the layout asked for."""
    return view.get("strategy") == placement.strategy and (
        placement.nodes is None or len(node_ids(view)) == placement.nodes
    )


async def _delete_others(http: httpx.AsyncClient, model: str, keep: str | None) -> None:
    for view in (await _json(http, "GET", "/instances"))["instances"]:
        if view.get("model") == model and view.get("id") != keep:
            response = await _call(http, "DELETE", f"/instances/{view['id']}")
            if response.status_code not in (200, 404):  # 404: gone already
                raise PlacementError(f"deleting {view['id']}: {error_message(response)}")


async def _preview(http: httpx.AsyncClient, model: str, placement: Placement) -> dict[str, Any]:
    """The preview of this strategy on this many nodes; PlacementError when the cluster
    has fewer worker nodes."""
    previews = await _json(http, "GET", "/instances/previews", params={"model": model})
    for preview in previews:
        if preview["strategy"] == placement.strategy and preview["node_count"] == placement.nodes:
            return dict(preview)
    workers = max((p["node_count"] for p in previews), default=0)
    raise PlacementError(f"{placement.label()}: the cluster has {workers} worker node(s)")


async def _place_body(http: httpx.AsyncClient, model: str, placement: Placement) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "strategy": placement.strategy}
    if placement.nodes is None:
        return body
    preview = await _preview(http, model, placement)
    if not preview["valid"]:
        raise PlacementError(f"{placement.label()}: {preview['reason']}")
    return {**body, "nodes": node_ids(preview), "min_nodes": placement.nodes}


async def wait_ready(http: httpx.AsyncClient, instance_id: str) -> dict[str, Any]:
    """The instance's view once it is ready; PlacementError when it fails."""
    while True:
        view = await _json(http, "GET", f"/instances/{instance_id}")
        status = view.get("status")
        if status == "ready":
            return dict(view)
        if status == "failed":
            raise PlacementError(f"instance {instance_id} failed (GET /state has the detail)")
        await trio.sleep(POLL_S)


async def place(
    http: httpx.AsyncClient, model: str, placement: Placement, ready_timeout: float
) -> dict[str, Any]:
    """Make `placement` the only instance of `model` and wait until it is ready; returns
    the instance as `GET /instances/{id}` shows it."""
    current = (await _json(http, "GET", "/instances"))["instances"]
    reuse = next(
        (
            v
            for v in current
            if v.get("model") == model and v.get("status") == "ready" and fits(v, placement)
        ),
        None,
    )
    if reuse is not None:
        await _delete_others(http, model, reuse["id"])
        return dict(reuse)
    if placement.nodes is not None:
        await _preview(http, model, placement)  # too few nodes: say so, delete nothing
    await _delete_others(http, model, None)
    body = await _place_body(http, model, placement)
    created = await _json(http, "POST", "/instances", json=body)
    with trio.move_on_after(ready_timeout):
        view = await wait_ready(http, created["id"])
        await _delete_others(http, model, view["id"])
        return view
    raise PlacementError(f"instance {created['id']} not ready within {ready_timeout:g} s")
