"""`GET /metrics`: Prometheus text that prometheus_client's own parser reads, counting the
requests the test made by dialect, route rule and status; and the stream observer that
times first tokens and gaps and counts tokens."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from exo.api.admin import dialect_of
from exo.engine.protocol import Finished, TokenOut
from exo.metrics import NodeMetrics

from .fakes import MODEL, FakeBackend, tokens
from .helpers import running

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition by (name, labels)."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def requests_of(found: dict[tuple[str, frozenset[tuple[str, str]]], float], **labels: str) -> float:
    return found.get(("exo_http_requests_total", frozenset(labels.items())), 0.0)


async def test_requests_are_counted_by_dialect_route_and_status() -> None:
    backend = FakeBackend(tokens("Hel", "lo", prompt_tokens=5))
    with trio.fail_after(20):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            for _ in range(2):
                assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
            assert (
                await client.post("/v1/chat/completions", json={"model": MODEL})
            ).status_code == 400
            assert (await client.post("/v1/messages", json={})).status_code == 400
            assert (await client.get("/api/tags")).status_code == 200
            assert (await client.get("/no/such/route")).status_code == 404
            scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=")
    found = samples(scraped.text)
    chat = {"dialect": "openai", "route": "/v1/chat/completions", "method": "POST"}
    assert requests_of(found, **chat, status="200") == 2
    assert requests_of(found, **chat, status="400") == 1
    messages = {"dialect": "anthropic", "route": "/v1/messages", "method": "POST"}
    assert requests_of(found, **messages, status="400") == 1
    tags = {"dialect": "ollama", "route": "/api/tags", "method": "GET"}
    assert requests_of(found, **tags, status="200") == 1
    # An unknown path is one series however many paths are tried.
    assert requests_of(found, dialect="none", route="unmatched", method="GET", status="404") == 1
    assert not any("/no/such/route" in str(labels) for _, labels in found)


def test_routes_belong_to_their_dialects() -> None:
    assert dialect_of("/v1/chat/completions") == "openai"
    assert dialect_of("/v1/completions") == "openai"
    assert dialect_of("/v1/responses/<path:response_id>") == "responses"
    assert dialect_of("/v1/messages/count_tokens") == "anthropic"
    assert dialect_of("/api/chat") == "ollama"
    assert dialect_of("/ollama/api/chat") == "ollama"
    assert dialect_of("/instances") == "exo"


async def test_a_stream_is_timed_and_its_tokens_counted() -> None:
    metrics = NodeMetrics()

    async def chunks() -> AsyncIterator[TokenOut | Finished]:
        await trio.sleep(0.05)
        for token in range(3):
            yield TokenOut("r", "x", token)
            await trio.sleep(0.02)
        yield Finished("r", "length", prompt_tokens=7, completion_tokens=3, cached_tokens=4)

    started = time.perf_counter()
    seen = [chunk async for chunk in metrics.timed(chunks(), "m", started)]
    assert len(seen) == 4  # unchanged
    found = samples(metrics.render().decode())
    model = frozenset({("model", "m")})
    assert found[("exo_time_to_first_token_seconds_count", model)] == 1
    assert found[("exo_time_to_first_token_seconds_sum", model)] >= 0.05
    assert found[("exo_inter_token_latency_seconds_count", model)] == 2
    assert found[("exo_inter_token_latency_seconds_sum", model)] >= 0.04
    assert found[("exo_prompt_tokens_total", model)] == 7
    assert found[("exo_cached_prompt_tokens_total", model)] == 4
    assert found[("exo_completion_tokens_total", model)] == 3


async def read_events(url: str, count: int, **headers: str) -> list[tuple[str, str | None, str]]:
    """The first `count` server-sent events of `GET url`: (event, id, data); a keep-alive
    comment counts as ("keepalive", None, "")."""
    got: list[tuple[str, str | None, str]] = []
    fields: dict[str, str] = {}
    async with httpx.AsyncClient() as client, client.stream("GET", url, headers=headers) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "text/event-stream"
        async for line in reply.aiter_lines():
            if line.startswith(": keep-alive"):
                got.append(("keepalive", None, ""))
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                got.append((fields["event"], fields.get("id"), fields["data"]))
                fields = {}
            if len(got) == count:
                return got
    return got


# An endless stream read in part: httpx leaves httpcore's body generator to Trio's
# finalizer, which warns (the stream itself is closed; helpers.RawResponse says more).
@pytest.mark.filterwarnings(r"ignore:Async generator '(httpx|httpcore)\.:ResourceWarning")
async def test_events_stream_a_snapshot_then_each_event_and_resume_after_an_index() -> None:
    events = [{"index": 1, "term": 3, "event": {"type": "A"}}, {"index": 2, "term": 3, "event": {}}]
    backend = FakeBackend(events=events)
    backend.state["index"] = 0
    with trio.fail_after(20):
        async with running(backend) as url:
            fresh = await read_events(f"{url}/events", 4)
            resumed = await read_events(f"{url}/events", 2, **{"Last-Event-ID": "1"})
            asked = await read_events(f"{url}/events?from=2", 1)
            async with httpx.AsyncClient() as client:
                bad = await client.get(f"{url}/events?from=-1")
    assert [(kind, id_) for kind, id_, _ in fresh] == [
        ("snapshot", "0"),
        ("event", "1"),
        ("event", "2"),
        ("keepalive", None),
    ]
    assert json.loads(fresh[0][2])["term"] == 3
    assert json.loads(fresh[1][2]) == events[0]
    assert [(kind, id_) for kind, id_, _ in resumed] == [("event", "2"), ("keepalive", None)]
    assert asked == [("keepalive", None, "")]
    assert backend.updates_after == [None, 1, 2]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "from"
