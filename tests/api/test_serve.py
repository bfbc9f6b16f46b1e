"""`serve` on a free port, its shutdown paths, and the admin and model-listing routes."""

from __future__ import annotations

import socket
from functools import partial

import httpx
import pytest
import trio

from exo.api.app import create_app, serve

from .fakes import MODEL, Block, FakeBackend, fake_card, tokens
from .helpers import NODE_LABEL, is_cancellation, post_bytes, raw_request, running


async def _refused(host: str, port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_port_zero_reports_bound_port_and_cancel_stops() -> None:
    app = create_app(FakeBackend(), node_label=NODE_LABEL)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
            assert host == "127.0.0.1" and port > 0
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://{host}:{port}/healthz")
            assert response.json() == {"status": "ok"}
            nursery.cancel_scope.cancel()
        # Cancellation is enough to stop the server and release the port.
        assert await _refused(host, port)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_bind() -> None:
    app = create_app(FakeBackend())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(serve, app, "::1", 0))
            assert host == "::1" and port > 0
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://[::1]:{port}/healthz")
            assert response.status_code == 200
            nursery.cancel_scope.cancel()


async def test_shutdown_trigger_drains_then_cancels_open_streams() -> None:
    backend = FakeBackend([*tokens("first")[:1], Block()])
    stop = trio.Event()
    app = create_app(backend)
    request = post_bytes(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(
                    serve, app, "127.0.0.1", 0, shutdown_trigger=stop.wait, graceful_timeout=0.2
                )
            )
            async with raw_request(f"http://{host}:{port}", request) as response:
                await response.next_event()
                await response.next_event()
                stop.set()
                # The stream outlives the grace period, so it is cancelled and the response
                # ends without `[DONE]`; the backend's context is left.
                with trio.fail_after(2):
                    await backend.exited.wait()
        # serve returned on its own: the nursery closed without being cancelled.
    assert is_cancellation(backend.exit_errors[0])
    assert await _refused(host, port)


async def test_healthz_and_state() -> None:
    view = {
        "node_id": "n1",
        "master": "n1",
        "term": 2,
        "index": 5,
        "hash": "ab",
        "state": {"x": [1]},
    }
    backend = FakeBackend(state=view)
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            health = await http.get("/healthz")
            state = await http.get("/state")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert health.headers["x-exo-node"] == NODE_LABEL
    assert state.status_code == 200
    assert state.json() == view


async def test_models_list_and_get() -> None:
    backend = FakeBackend(
        cards=[fake_card("a"), fake_card("org/b")], aliases={"tiny": "org/tiny-4bit"}
    )
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            listing = await http.get("/v1/models")
            one = await http.get("/v1/models/org/b")
            exo_models = await http.get("/models")
    assert listing.status_code == 200
    body = listing.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["a", "org/b", "tiny"]
    for model in body["data"][:2]:
        assert model["object"] == "model" and model["created"] == 0 and model["owned_by"] == "exo"
    # A catalogue alias is listed too: asking for it reads its repo from the hub.
    assert body["data"][2] == {
        "id": "tiny",
        "object": "model",
        "created": 0,
        "owned_by": "org",
        "name": "org/tiny-4bit",
    }
    assert one.status_code == 200 and one.json()["id"] == "org/b"
    views = exo_models.json()["models"]
    assert [v["id"] for v in views] == ["a", "org/b", "tiny"]
    assert views[2]["alias_of"] == "org/tiny-4bit" and views[2]["card"] is None


async def test_models_through_openai_client() -> None:
    import openai

    backend = FakeBackend()
    with trio.fail_after(10):
        async with running(backend) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            models = [m async for m in client.models.list()]
            model = await client.models.retrieve(MODEL)
            with pytest.raises(openai.NotFoundError):
                await client.models.retrieve("nope")
            await client.close()
    assert [m.id for m in models] == [MODEL]
    assert model.owned_by == "exo"


async def test_port_in_use_raises() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                # A plain OSError straight from start(), not an exception group.
                with pytest.raises(OSError):
                    await nursery.start(
                        partial(serve, create_app(FakeBackend()), "127.0.0.1", port)
                    )
