"""The admin routes' bodies (`POST /downloads`, `DELETE /downloads`' query, `POST
/models`): typed models that refuse what they do not know, in the API's error shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from tests.api.fakes import MODEL, FakeBackend
from tests.api.helpers import running

BAD: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("POST", "/downloads", {}, "model", "'model' is required"),
    ("POST", "/downloads", {"model": MODEL, "node": ""}, "node", "'node' must be a non-empty"),
    ("POST", "/downloads", {"model": MODEL, "to": "n"}, "to", "Unknown field 'to'."),
    ("DELETE", "/downloads?node=n", {}, "model", "'model' is required"),
    ("POST", "/models", {"model": "my model", "path": "/m"}, "model", "'model' must be"),
    ("POST", "/models", {"model": "m\x07", "path": "/m"}, "model", "control characters"),
    ("POST", "/models", {"model": "m", "path": "m"}, "path", "'path' must be"),
    ("POST", "/models", {"model": "m", "path": "/m", "x": 1}, "x", "Unknown field 'x'."),
]


@pytest.mark.parametrize(("method", "path", "body", "param", "text"), BAD)
async def test_a_bad_admin_body_names_the_field(
    method: str, path: str, body: dict[str, Any], param: str, text: str
) -> None:
    backend = FakeBackend()
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            content = None if method == "DELETE" else httpx.Request("POST", "/", json=body).content
            response = await client.request(method, path, content=content)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and text in error["message"], error
