"""One real `exo node` process, the real MLX engine, the official `openai` client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.nodes import NodeProcess, wait_for
from tests.integration.streams import MODEL, LongStream, client

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France? Answer in one sentence."


def ask(node: NodeProcess, stream: bool, max_tokens: int | None = None) -> str:
    """Greedy answer to QUESTION, through a client that is closed afterwards."""
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    with client(node) as c:
        if not stream:
            response = c.chat.completions.create(
                model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens
            )
            assert response.choices[0].finish_reason == ("stop" if max_tokens is None else "length")
            assert response.usage is not None and response.usage.completion_tokens > 0
            return response.choices[0].message.content or ""
        parts = []
        with c.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens, stream=True
        ) as chunks:
            for chunk in chunks:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
        return "".join(parts)


def test_first_request_places_the_model_and_answers_paris(node: NodeProcess) -> None:
    assert node.state()["state"]["instances"] == {}
    plain = ask(node, stream=False)
    assert "Paris" in plain
    streamed = ask(node, stream=True)
    assert streamed == plain


def test_models_and_unknown_model(node: NodeProcess) -> None:
    with client(node, timeout=30) as c, pytest.raises(openai.NotFoundError) as caught:
        assert MODEL in [m.id for m in c.models.list().data]
        c.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert "no-such-model" in str(caught.value)


def test_state_reports_the_node_and_the_ready_runner(node: NodeProcess) -> None:
    node.wait_ready()
    view = node.state()
    assert view["master"] == view["node_id"]
    assert view["term"] >= 1
    profile = view["state"]["nodes"][view["node_id"]]
    assert profile["memory_total"] > 0 and profile["cpu_cores"] >= 1
    (instance,) = view["state"]["instances"].values()
    assert instance["model"] == MODEL
    runner = view["state"]["runners"][instance["instance_id"]][view["node_id"]]
    assert runner["phase"] == "ready"
    # The runner says which BLAS it computes with; on Linux the install provides OpenBLAS.
    if sys.platform == "linux":
        assert "openblas" in runner["detail"], runner["detail"]


def _scrape(node: NodeProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{node.url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_what_a_client_did(node: NodeProcess) -> None:
    """The official client's request shows in `/metrics` as prometheus_client parses it:
    the HTTP count, its tokens, one first-token time; and the state's gauges."""
    node.wait_ready()
    before = _scrape(node)
    with client(node) as c:
        reply = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=12
        )
    assert reply.usage is not None
    after = _scrape(node)

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = {"dialect": "openai", "route": "/v1/chat/completions", "method": "POST"}
    assert grew("exo_http_requests_total", **route, status="200") == 1
    assert grew("exo_prompt_tokens_total", model=MODEL) == reply.usage.prompt_tokens
    assert grew("exo_completion_tokens_total", model=MODEL) == reply.usage.completion_tokens
    assert grew("exo_time_to_first_token_seconds_count", model=MODEL) == 1
    assert grew("exo_inter_token_latency_seconds_count", model=MODEL) >= 1
    view = node.state()
    me = view["node_id"]
    assert after[("exo_nodes", frozenset())] == 1
    assert after[("exo_is_master", frozenset())] == 1
    assert after[("exo_elections_won_total", frozenset())] == 1  # it elected itself, once
    assert after[("exo_synced", frozenset())] == 1
    assert after[("exo_term", frozenset())] == view["term"]
    assert 0 < after[("exo_log_index", frozenset())] <= view["index"]
    (instance_id,) = view["state"]["instances"]
    ready = {("instance", instance_id), ("node", me), ("phase", "ready")}
    assert after[("exo_runner_status", frozenset(ready))] == 1
    assert after[("exo_runner_batch_size", frozenset({("instance", instance_id)}))] == 8
    memory = view["state"]["nodes"][me]["memory_total"]
    assert after[("exo_node_memory_total_bytes", frozenset({("node", me)}))] == memory


def test_exo_status_shows_the_node_and_its_instance(node: NodeProcess) -> None:
    node.wait_ready()
    command = [sys.executable, "-m", "exo.cli", "status", "--url", node.url]
    summary = json.loads(subprocess.check_output([*command, "--json"], timeout=30))
    view = node.state()
    assert summary["master"] == view["node_id"] and summary["term"] == view["term"]
    assert [n["id"] for n in summary["nodes"]] == [view["node_id"]]
    (instance,) = summary["instances"]
    assert instance["model"] == MODEL
    assert [(s["node"], s["runner"]) for s in instance["shards"]] == [(view["node_id"], "ready")]
    text = subprocess.check_output(command, timeout=30, text=True)
    assert f"cluster: master {view['node_id']}" in text and "runner ready" in text


def test_events_stream_the_state_and_then_each_change(node: NodeProcess) -> None:
    """`GET /events` starts with the state and then sends every replicated event, in
    order, as the node applies it: a request's tallies show up without polling."""
    node.wait_ready()
    asked = threading.Thread(target=ask, args=(node, False, 4))
    received: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("GET", f"{node.url}/events", timeout=60) as reply:
        assert reply.headers["content-type"] == "text/event-stream"
        kind = ""
        for line in reply.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                received.append((kind, json.loads(line[len("data: ") :])))
                if len(received) == 1:
                    asked.start()  # the snapshot is in hand: now change the state
                elif (
                    received[-1][1].get("event", {}).get("type") == "RequestsTallied"
                    and not asked.is_alive()
                ):
                    break  # the tally reported after the request ended
    asked.join(timeout=60)
    (first_kind, snapshot), *events = received
    assert first_kind == "snapshot" and snapshot["node_id"] == node.state()["node_id"]
    assert events and all(kind == "event" for kind, _ in events)
    indexes = [data["index"] for _, data in events]
    assert indexes == list(range(snapshot["index"] + 1, snapshot["index"] + 1 + len(events)))
    # Resuming after the snapshot's index gives the same events, without a snapshot.
    with httpx.stream("GET", f"{node.url}/events?from={snapshot['index']}", timeout=60) as reply:
        data_lines = (line for line in reply.iter_lines() if line.startswith(("event:", "data:")))
        assert next(data_lines) == "event: event"
        assert json.loads(next(data_lines)[len("data: ") :]) == events[0][1]


def test_replay_of_the_log_matches_the_live_hash(node: NodeProcess) -> None:
    ask(node, stream=False, max_tokens=4)
    view = wait_for(
        lambda: node.state() if not node.state()["state"]["in_flight"] else None, 10, "quiet state"
    )
    replayed = subprocess.run(
        [
            sys.executable,
            "-m",
            "exo.cli",
            "replay",
            "--home",
            str(node.home),
            "--until",
            str(view["index"]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert replayed.stdout.strip().splitlines()[-1] == f"state-hash: {view['hash']}"


def test_a_runner_killed_mid_stream_fails_the_stream_and_the_node_recovers(
    node: NodeProcess,
) -> None:
    node.wait_ready()
    (pid,) = node.runner_pids()
    stream = LongStream(node)
    assert stream.started.wait(60), "no token arrived"
    os.kill(pid, signal.SIGKILL)
    assert stream.ended_within(2.0) < 2.0
    (error,) = stream.outcome
    assert isinstance(error, openai.APIError), error
    assert "runner" in str(error)
    # The runner restarts and the next request is served.
    assert "Paris" in ask(node, stream=False)
    assert node.runner_pids() != [pid]


def test_malformed_request_gets_an_openai_error(node: NodeProcess) -> None:
    response = httpx.post(node.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_concurrent_requests_each_get_their_own_answer(node: NodeProcess) -> None:
    node.wait_ready()
    answers: dict[int, str] = {}

    def run(slot: int) -> None:
        answers[slot] = ask(node, stream=bool(slot % 2))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == 3
    assert all("Paris" in a for a in answers.values()), answers
    assert len(set(answers.values())) == 1


COUNT = "Count from 1 to 500, one per line."
COUNT_CHAT = [{"role": "user", "content": COUNT}]
# Per dialect: the streaming route, its greedy body, and a line only a piece of text carries.
LONG_STREAMS = {
    "openai": (
        "/v1/chat/completions",
        {"messages": COUNT_CHAT, "temperature": 0, "max_tokens": 2000, "stream": True},
        '"content":"',
    ),
    "completions": (
        "/v1/completions",
        {"prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": 2000, "stream": True},
        '"text":"',
    ),
    "responses": (
        "/v1/responses",
        {"input": COUNT, "temperature": 0, "max_output_tokens": 2000, "stream": True},
        "response.output_text.delta",
    ),
    "anthropic": (
        "/v1/messages",
        {"messages": COUNT_CHAT, "temperature": 0, "max_tokens": 2000, "stream": True},
        "text_delta",
    ),
    "ollama": (
        "/api/chat",
        {"messages": COUNT_CHAT, "options": {"temperature": 0, "num_predict": 2000}},
        '"done":false',
    ),
}


@pytest.mark.parametrize("dialect", list(LONG_STREAMS))
def test_a_client_that_leaves_mid_stream_frees_the_runner(node: NodeProcess, dialect: str) -> None:
    node.wait_ready()
    before = node.state()["state"]["request_counters"]
    path, fields, marker = LONG_STREAMS[dialect]
    body = {"model": MODEL, **fields}
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", node.url + path, json=body) as response,
    ):
        lines = response.iter_lines()
        assert next(line for line in lines if marker in line and '"content":""' not in line)
    # Leaving cancels the generation on the runner: the next request is answered at once
    # instead of after ~2000 tokens, and the abandoned request is recorded as failed.
    started = time.monotonic()
    assert "Paris" in ask(node, stream=False)
    assert time.monotonic() - started < 30

    def failed_count(counters: dict[str, dict[str, int]]) -> int:
        return sum(c["failed"] for c in counters.values())

    wait_for(
        lambda: (
            True
            if failed_count(node.state()["state"]["request_counters"]) > failed_count(before)
            else None
        ),
        10,
        "the abandoned request recorded as failed",
    )


def test_instances_api_places_reports_and_deletes(node: NodeProcess) -> None:
    me = node.state()["node_id"]
    assert "Paris" in ask(node, stream=False)  # the request places the model if needed
    [serving] = node.get("/instances")["instances"]
    assert serving["status"] == "ready" and serving["model"] == "smollm2-135m"
    previews = node.get("/instances/previews?model=smollm2-135m")
    one = next(p for p in previews if p["strategy"] == "pipeline" and p["node_count"] == 1)
    assert one["valid"] and one["predicted_tokens_per_second"] > 0
    assert one["shards"] == [
        {"node_id": me, "rank": 0, "start_layer": 0, "end_layer": 30, "keep_quantized": False}
    ]

    def call(method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            node.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    status, created = call("POST", "/instances", {"model": "smollm2-135m", "nodes": [me]})
    assert status == 201, created
    assert created["status"] in ("downloading", "loading", "ready")
    wait_for(
        lambda: node.get(f"/instances/{created['id']}")["status"] == "ready" or None,
        120,
        "the second instance ready",
    )
    assert call("DELETE", f"/instances/{created['id']}") == (
        200,
        {"id": created["id"], "deleted": True},
    )
    status, error = call("GET", f"/instances/{created['id']}")
    assert status == 404 and error["error"]["code"] == "instance_not_found"
    status, error = call("POST", "/instances", {"model": "smollm2-135m", "nodes": ["node-x"]})
    assert status == 400 and "unknown nodes: node-x" in error["error"]["message"]


def test_the_ollama_client_works_unchanged(node: NodeProcess) -> None:
    import ollama

    question = [{"role": "user", "content": QUESTION}]
    greedy = {"temperature": 0}
    with ollama.Client(host=node.url) as client:
        reply = client.chat(model=MODEL, messages=question, options=greedy).message.content
        assert reply is not None and "Paris" in reply
        parts = client.chat(model=MODEL, messages=question, options=greedy, stream=True)
        assert "".join(part.message.content or "" for part in parts) == reply
        generated = client.generate(model=MODEL, prompt=QUESTION, options=greedy).response
        assert generated is not None and "Paris" in generated
        listed = [m.model for m in client.list().models]
        assert MODEL in listed
        assert MODEL in [m.model for m in client.ps().models]
        shown = client.show(MODEL)
        assert shown.modelinfo is not None and shown.modelinfo["llama.block_count"] == 30
        streamed = client.generate(model=MODEL, prompt=QUESTION, options=greedy, stream=True)
        assert "".join(part.response for part in streamed) == generated
        # A schema whose strings are bounded: it ends by EOS however the model samples.
        city = {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        }
        as_json = client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "Name a city."}],
            format=city,
            options={"seed": 1, "num_predict": 40},
        )
        assert as_json.done_reason == "stop", as_json
        assert set(json.loads(as_json.message.content or "")) == {"city"}
    assert httpx.head(node.url).status_code == 200
    assert httpx.get(node.url + "/api/version").json()["version"]
    # Also under exo's /ollama prefix, as OpenWebUI may be pointed at it.
    with ollama.Client(host=node.url + "/ollama") as prefixed:
        assert [m.model for m in prefixed.list().models] == listed
