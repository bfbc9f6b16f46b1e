"""A real `exo node` started with `--api-key`: the official `openai` client with its key is
answered and without it refused, `exo status` and `exo bench` take the key from
EXO_API_KEY; and a node serving beyond loopback with `--insecure-api` warns at start."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.integration.nodes import API_KEY, NodeProcess
from tests.integration.streams import MODEL

pytestmark = pytest.mark.slow


def exo(*argv: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EXO_API_KEY"}
    if key is not None:
        env["EXO_API_KEY"] = f"{key},another-key"  # a client sends the first
    command = [sys.executable, "-m", "exo.cli", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def test_the_openai_client_with_the_key_is_answered_and_without_it_refused(
    keyed_node: NodeProcess,
) -> None:
    with openai.OpenAI(base_url=keyed_node.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=4,
            timeout=240,  # the first request places and loads the model
        )
    assert reply.choices[0].message.content
    with (
        openai.OpenAI(base_url=keyed_node.url + "/v1", api_key="sk-wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        client.models.list()
    assert refused.value.code == "invalid_api_key"
    with urllib.request.urlopen(keyed_node.url + "/healthz", timeout=10) as health:
        assert health.status == 200
    with pytest.raises(urllib.error.HTTPError) as state:
        urllib.request.urlopen(keyed_node.url + "/state", timeout=10)
    state.value.close()  # it holds the connection
    assert state.value.code == 401


def test_exo_status_and_bench_send_the_key_from_the_environment(keyed_node: NodeProcess) -> None:
    refused = exo("status", "--url", keyed_node.url, key=None)
    assert refused.returncode == 1 and "--api-key KEY or EXO_API_KEY" in refused.stderr
    status = exo("status", "--url", keyed_node.url, key=API_KEY)
    assert status.returncode == 0, status.stderr
    assert f"cluster: master {keyed_node.state()['node_id']}" in status.stdout
    bench = exo(
        *("bench", "--url", keyed_node.url, "--prompt-tokens", "8", "--gen-tokens", "2"),
        *("--requests", "1", "--concurrency", "1", "--no-progress"),
        key=API_KEY,
    )
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert bench.stdout.startswith("placement")


def test_insecure_api_beyond_loopback_warns_at_start(tmp_path: Path, models_dir: Path) -> None:
    node = NodeProcess(
        tmp_path / "open",
        models_dir,
        *("--api-host", "0.0.0.0", "--insecure-api", "--preload", "", "--no-worker"),
    )
    node.start()
    try:
        assert node.get("/state")["node_id"]  # no key asked
    finally:
        assert node.stop() == 0
    warning = f"anyone who can reach 0.0.0.0:{node.api_port} can use this node"
    assert warning in node.log_text()
