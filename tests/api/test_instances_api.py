"""`/instances` over real hypercorn with a scripted backend: shapes, statuses, and every
kind of bad input answered with a 4xx in the API's error shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from tests.api.fakes import MODEL, FakeBackend
from tests.api.helpers import running


async def test_place_list_get_delete() -> None:
    backend = FakeBackend()
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            created = await client.post(
                "/instances", json={"model": MODEL, "strategy": "tensor", "nodes": ["a", "b"]}
            )
            assert created.status_code == 201
            body = created.json()
            assert body["strategy"] == "tensor" and body["model"] == MODEL
            assert backend.min_nodes_by_id[body["id"]] == 2  # defaults to len(nodes)
            listed = (await client.get("/instances")).json()
            assert [i["id"] for i in listed["instances"]] == [body["id"]]
            assert (await client.get(f"/instances/{body['id']}")).json() == body
            deleted = await client.delete(f"/instances/{body['id']}")
            assert deleted.json() == {"id": body["id"], "deleted": True}
            gone = await client.get(f"/instances/{body['id']}")
            assert gone.status_code == 404
            assert gone.json()["error"]["code"] == "instance_not_found"
            previews = await client.get("/instances/previews", params={"model": MODEL})
            assert previews.status_code == 200 and previews.json()[0]["valid"] is True


BAD: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/instances", b"{", 400, "not valid JSON"),
    ("POST", "/instances", [], 400, "must be a JSON object"),
    ("POST", "/instances", {}, 400, "'model' is required"),
    ("POST", "/instances", {"model": 3}, 400, "'model' must be a string, got an integer"),
    ("POST", "/instances", {"model": MODEL, "strategy": "ring"}, 400, "'strategy'"),
    ("POST", "/instances", {"model": MODEL, "nodes": []}, 400, "'nodes'"),
    ("POST", "/instances", {"model": MODEL, "nodes": ["a", "a"]}, 400, "distinct"),
    ("POST", "/instances", {"model": MODEL, "nodes": [1]}, 400, "'nodes[0]' must be a string"),
    ("POST", "/instances", {"model": MODEL, "min_nodes": 0}, 400, "'min_nodes'"),
    ("POST", "/instances", {"model": MODEL, "min_nodes": True}, 400, "'min_nodes'"),
    ("POST", "/instances", {"model": MODEL, "context_length": 0}, 400, "'context_length'"),
    ("GET", f"/instances/previews?model={MODEL}&context_length=x", None, 400, "'context_length'"),
    ("GET", f"/instances/previews?model={MODEL}&context_length=0", None, 400, "'context_length'"),
    # 500s before: `isdigit` passes '²', and `int` refuses it and numbers of 4300+ digits.
    ("GET", f"/instances/previews?model={MODEL}&context_length=²", None, 400, "'context_length'"),
    (
        "GET",
        f"/instances/previews?model={MODEL}&context_length={'9' * 5000}",
        None,
        400,
        "'context_length'",
    ),
    ("POST", "/instances", {"model": MODEL, "context_length": "4k"}, 400, "'context_length'"),
    ("POST", "/instances", {"model": MODEL, "colour": "red"}, 400, "Unknown field 'colour'"),
    ("POST", "/instances", {"model": "nope"}, 404, "does not exist"),
    ("GET", "/instances/inst-missing", None, 404, "no instance"),
    ("DELETE", "/instances/inst-missing", None, 404, "no instance"),
    ("GET", "/instances/previews", None, 400, "?model="),
    ("GET", "/instances/previews?model=nope", None, 404, "does not exist"),
    ("PUT", "/instances", None, 405, ""),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD)
async def test_bad_input_gets_a_clear_4xx(
    method: str, path: str, body: Any, status: int, message: str
) -> None:
    backend = FakeBackend()
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            if isinstance(body, bytes):
                response = await client.request(method, path, content=body)
            elif body is None:
                response = await client.request(method, path)
            else:
                response = await client.request(method, path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert "Traceback" not in response.text
