"""Hub models end to end: real `exo node` processes fetch repos from a local server that
speaks the hub's protocol (`tests/hub/server.py`), through huggingface_hub's own code.

The repos: the bundled model re-saved as three safetensors files split by layers (so a
pipeline shard needs fewer files than the whole), a gated copy of it, a repo without
weights and one of an architecture mlx-lm does not know.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from exo.events.codec import from_plain
from exo.events.facts import ModelCard
from exo.models.hub import files_for_layers
from tests.hub.repos import bundled_repo, repo_unknown_arch, repo_without_weights
from tests.hub.server import HubServer
from tests.integration.nodes import NodeProcess, agreement, start_cluster, wait_for

pytestmark = pytest.mark.slow

REPO = "exo-test/SmolLM2-135M-Instruct-4bit"
GATED = "exo-test/gated-smollm2"
NO_WEIGHTS = "exo-test/no-weights"
UNKNOWN_ARCH = "exo-test/unknown-arch"
TOKEN = "hf_test_token"
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    root = tmp_path_factory.mktemp("hub-repos")
    server = HubServer(tmp_path_factory.mktemp("hub-root"))
    server.add_repo(REPO, bundled_repo(root / "bundled", files=3))
    server.add_repo(GATED, root / "bundled")
    server.gate(GATED, TOKEN)
    server.add_repo(NO_WEIGHTS, repo_without_weights(root / "no-weights"))
    server.add_repo(UNKNOWN_ARCH, repo_unknown_arch(root / "unknown"))
    with server:
        yield server


def chat(node: NodeProcess, model: str, **extra: Any) -> str:
    with openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0) as client:
        reply = client.chat.completions.create(
            model=model, messages=QUESTION, temperature=0, max_tokens=24, timeout=240, **extra
        )
    return reply.choices[0].message.content or ""


def snapshot_files(hf_home: Path, repo: str) -> set[str]:
    snapshots = hf_home / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots"
    return (
        {p.name for d in snapshots.iterdir() for p in d.iterdir()} if snapshots.exists() else set()
    )


def test_a_hub_model_is_served_by_name_with_its_true_metadata_and_clear_errors(
    hub: HubServer, tmp_path: Path, models_dir: Path
) -> None:
    hf_home = tmp_path / "hf"
    node = NodeProcess(
        tmp_path / "home",
        models_dir,
        "--preload",
        "",
        env={**hub.client_env(), "HF_HOME": str(hf_home)},
    )
    node.start()
    try:
        hub.reset_counters()
        assert "Paris" in chat(node, REPO)
        repo_bytes = sum(p.stat().st_size for p in hub.repo_dir(REPO).iterdir())
        # Every file once (the card reads config.json and the safetensors headers too).
        assert hub.bytes_served(REPO) <= 1.05 * repo_bytes
        assert snapshot_files(hf_home, REPO) >= {
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
        }
        models = {m["id"]: m for m in node.get("/models")["models"]}
        download = models[REPO]["downloads"][node.state()["node_id"]]
        assert download["phase"] == "complete" and download["bytes_done"] == download["bytes_total"]
        card = models[REPO]["card"]
        assert card["architecture"] == "llama" and card["num_layers"] == 30
        assert len(card["revision"]) == 40
        # Served again from the cache: nothing more from the hub.
        hub.reset_counters()
        assert "Paris" in chat(node, REPO)
        assert hub.bytes_served() == 0
        with openai.OpenAI(base_url=node.url + "/v1", api_key="x") as client:
            listed = {m.id for m in client.models.list()}
        assert {"smollm2-135m", REPO} <= listed
        tags = {m["name"]: m for m in node.get("/api/tags")["models"]}
        details = tags[REPO]["details"]
        assert (details["family"], details["quantization_level"]) == ("llama", "Q4")
        assert details["parameter_size"] == "135M" and tags[REPO]["digest"] == card["digest"]
        assert not tags[REPO]["modified_at"].startswith("1970")

        bad = [
            ("exo-test/no-such-repo", openai.NotFoundError, "no-such-repo"),
            (GATED, openai.PermissionDeniedError, "gated"),
            (NO_WEIGHTS, openai.BadRequestError, "no safetensors"),
            (UNKNOWN_ARCH, openai.BadRequestError, "no_such_arch"),
        ]
        for model, error, words in bad:
            started = time.monotonic()
            with pytest.raises(error, match=words):
                chat(node, model)
            assert time.monotonic() - started < 10, model
        # The node still serves.
        assert "Paris" in chat(node, REPO)

        # A model directory of this node, served under a name of its own.
        local = post(
            node, "/models", {"model": "my-smollm", "path": str(hub.repo_dir(REPO).resolve())}
        )
        assert local["card"]["source"] == "local" and local["card"]["hosts"] == [
            node.state()["node_id"]
        ]
        assert "Paris" in chat(node, "my-smollm")
        with pytest.raises(urllib.error.HTTPError) as taken:
            post(node, "/models", {"model": "my-smollm", "path": "/tmp"})
        assert taken.value.code == 400
        taken.value.close()
        with pytest.raises(urllib.error.HTTPError) as empty:
            post(node, "/models", {"model": "nothing-here", "path": str(tmp_path)})
        assert empty.value.code == 400 and b"not a model directory" in empty.value.read()
        empty.value.close()
    finally:
        assert node.stop() == 0, node.log_text()[-4000:]


def test_a_killed_download_resumes_and_an_unreachable_hub_fails_requests_at_once(
    hub: HubServer, tmp_path: Path, models_dir: Path
) -> None:
    hf_home = tmp_path / "hf"
    env = {**hub.client_env(), "HF_HOME": str(hf_home), "HF_TOKEN": TOKEN}
    home = tmp_path / "home"
    node = NodeProcess(home, models_dir, "--preload", "", env=env).start()
    size = sum(p.stat().st_size for p in hub.repo_dir(GATED).iterdir())
    hub.reset_counters()
    hub.set_throttle(8_000_000)  # ~12 s for the 98 MB repo
    try:
        place = {"model": GATED, "strategy": "pipeline"}
        post(node, "/instances", place)
        wait_for(lambda: hub.bytes_served(GATED) > size // 3 or None, 60, "a third downloaded")
        node.stop(signal.SIGKILL)
        partial = hub.bytes_served(GATED)
        assert partial < size
        hub.set_throttle(None)
        node = NodeProcess(home, models_dir, "--preload", "", env=env)
        node.start()
        node.wait_ready()
        # Resumed from the .incomplete files: the hub sent the repo about once, not twice.
        assert hub.bytes_served(GATED) < size * 1.2, (hub.bytes_served(GATED), size)
        assert "Paris" in chat(node, GATED)

        # The hub goes away: a new model's card cannot be read, and the request says so
        # at once instead of waiting out --ready-timeout.
        hub.set_offline(True)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError, match="hub") as failed:
            chat(node, REPO)
        assert failed.value.status_code == 503 and time.monotonic() - started < 30
        # A model already here keeps serving.
        assert "Paris" in chat(node, GATED)

        # The hub goes away in the middle of a download: requests waiting for the model
        # fail with the reason, and the download resumes once the hub is back.
        hub.set_offline(False)
        hub.set_throttle(8_000_000)
        hub.reset_counters()
        post(node, "/instances", {"model": REPO})
        wait_for(lambda: hub.bytes_served(REPO) > size // 4 or None, 60, "a quarter downloaded")
        hub.set_offline(True)
        wait_for(lambda: _download_phase(node, REPO) == "failed" or None, 60, "failed download")
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError, match="download failed") as waiting:
            chat(node, REPO)
        assert waiting.value.status_code == 503 and time.monotonic() - started < 10
        hub.set_throttle(None)
        hub.set_offline(False)
        wait_for(lambda: _download_phase(node, REPO) == "complete" or None, 120, "resumed")
        assert "Paris" in chat(node, REPO)
        assert hub.bytes_served(REPO) < size * 1.2
    finally:
        hub.set_offline(False)
        hub.set_throttle(None)
        assert node.stop() == 0, node.log_text()[-4000:]


def test_a_three_node_pipeline_fetches_only_each_shards_files_each_once_from_the_hub(
    hub: HubServer, tmp_path: Path, models_dir: Path
) -> None:
    nodes = start_cluster(tmp_path, models_dir, 3, env=hub.client_env())
    try:
        wait_for(lambda: agreement(nodes, 3), 60, "one cluster")
        hub.reset_counters()

        def placed() -> dict[str, Any] | None:
            try:
                return post(nodes[0], "/instances", {"model": REPO, "min_nodes": 3})
            except urllib.error.HTTPError as exc:  # links not measured yet
                with exc:
                    if exc.code == 400 and b"measured" in exc.read():
                        return None
                raise

        instance = wait_for(placed, 60, "a 3-node placement")
        assert len(instance["shards"]) == 3
        wait_for(
            lambda: nodes[0].get(f"/instances/{instance['id']}")["status"] == "ready" or None,
            240,
            "the instance ready",
        )
        by_node = {n.state()["node_id"]: n for n in nodes}
        plain = next(m for m in nodes[0].get("/models")["models"] if m["id"] == REPO)["card"]
        card = from_plain(plain, ModelCard)
        for shard in instance["shards"]:
            node = by_node[shard["node_id"]]
            needed = files_for_layers(card, shard["start_layer"], shard["end_layer"])
            wanted = {f for f in needed if f.endswith(".safetensors")}
            here = {
                f
                for f in snapshot_files(node.home.parent / f"hf{nodes.index(node)}", REPO)
                if f.endswith(".safetensors")
            }
            assert here == wanted, (shard, here, wanted)
            if shard["rank"] == 1:  # a middle rank: no embedding, no head, only its layers
                assert here == {"model-00002-of-00003.safetensors"}, here
        # Asked at the last rank's node: relayed to rank 0.
        last = by_node[instance["shards"][-1]["node_id"]]
        assert "Paris" in chat(last, REPO)
        # Each file came from the hub once; nodes that needed it too copied it from a peer.
        served = hub.bytes_served(REPO)
        repo_bytes = sum(p.stat().st_size for p in hub.repo_dir(REPO).iterdir())
        print(f"hub served {served} bytes for a {repo_bytes}-byte repo to 3 nodes")
        assert served <= 1.05 * repo_bytes, (served, repo_bytes, hub.served_files())
        copied = [n for n in nodes if "copied model-" in n.log_text()]
        assert copied, "no node copied a file from a peer"
    finally:
        for node in nodes:
            node.stop()


def _download_phase(node: NodeProcess, model: str) -> str | None:
    view = next((m for m in node.get("/models")["models"] if m["id"] == model), None)
    downloads = list(view["downloads"].values()) if view else []
    return downloads[0]["phase"] if downloads else None


def post(node: NodeProcess, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        node.url + path,
        json.dumps(body).encode(),
        {"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())
