"""The dashboard's files: `/` gives browsers the page and scripts Ollama's answer, the page's
script and stylesheet come from the package, and `/events?view=sections` streams sections.
(The page itself runs in a real Chromium in tests/integration/test_dashboard.py.)"""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from .fakes import FakeBackend
from .helpers import running
from .test_metrics import read_events

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_browsers_get_the_page_and_scripts_get_ollamas_answer() -> None:
    with trio.fail_after(20):
        async with running(FakeBackend()) as url, httpx.AsyncClient(base_url=url) as client:
            browser = await client.get("/", headers={"Accept": BROWSER_ACCEPT})
            script = await client.get("/", headers={"Accept": "*/*"})  # curl's
            bare = await client.get("/", headers={"Accept": ""})
            prefixed = await client.get("/ollama/", headers={"Accept": BROWSER_ACCEPT})
            page = await client.get("/dashboard")
            code = await client.get("/dashboard/dashboard.js")
            style = await client.get("/dashboard/dashboard.css")
            missing = await client.get("/dashboard/secrets.txt")
    assert browser.status_code == 200
    assert browser.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/dashboard/dashboard.js">' in browser.text
    assert browser.text == page.text
    for answer in (script, bare, prefixed):
        assert answer.status_code == 200 and answer.text == "Ollama is running"
    assert code.headers["content-type"].startswith("text/javascript")
    # Read with fetch, which sends the API key (EventSource cannot).
    assert 'call("/events?view=sections"' in code.text and "new EventSource" not in code.text
    assert '<form id="key-form">' in browser.text
    assert style.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404 and "secrets.txt" in missing.json()["error"]["message"]


@pytest.mark.filterwarnings(r"ignore:Async generator '(httpx|httpcore)\.:ResourceWarning")
async def test_events_in_sections_and_an_unknown_view_refused() -> None:
    backend = FakeBackend()
    with trio.fail_after(20):
        async with running(backend) as url:
            got = await read_events(f"{url}/events?view=sections", 2)
            async with httpx.AsyncClient() as client:
                bad = await client.get(f"{url}/events?view=everything")
    assert [kind for kind, _, _ in got] == ["sections", "keepalive"]
    first = json.loads(got[0][2])
    assert first["node_id"] == backend.state["node_id"]
    assert set(first["sections"]) == {"nodes", "links", "instances"}
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "view"


async def test_downloads_start_stop_and_list_with_clear_errors() -> None:
    backend = FakeBackend()
    model = backend.cards[0].model_id
    with trio.fail_after(20):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            started = await client.post("/downloads", json={"model": model, "node": "n2"})
            stopped = await client.delete("/downloads", params={"model": model})
            listed = await client.get("/downloads")
            unknown = await client.post("/downloads", json={"model": "no-such-model"})
            extra = await client.post("/downloads", json={"model": model, "nodes": ["n2"]})
            missing = await client.delete("/downloads")
    assert started.status_code == 202
    assert started.json()["node"] == "n2" and started.json()["order"] == "fetch"
    assert stopped.status_code == 200 and stopped.json()["node"] == "n1"  # this node
    assert {(d["node"], d["order"]) for d in listed.json()["downloads"]} == {
        ("n2", "fetch"),
        ("n1", "stop"),
    }
    assert unknown.status_code == 404
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "nodes"
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
