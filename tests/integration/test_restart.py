"""A node restarted on the same home is the same node, keeps its instances, and survives a torn log."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.integration.nodes import NodeProcess, free_port

pytestmark = pytest.mark.slow


def test_restart_keeps_identity_and_instances_and_drops_a_torn_record(
    tmp_path: Path, models_dir: Path
) -> None:
    # Default preload: the bundled model is placed at start-up without any request.
    node = NodeProcess(tmp_path / "home", models_dir).start()
    try:
        instance_id = node.wait_ready()
        first = node.state()
    finally:
        assert node.stop() == 0, node.log_text()[-4000:]

    # A crash while appending leaves half a record at the end of the log.
    with open(tmp_path / "home" / "events.log", "ab") as log:
        log.write(b'0badc0de {"index": 99999, "te')

    node.start()
    try:
        assert node.wait_ready() == instance_id
        again = node.state()
        assert again["node_id"] == first["node_id"]
        assert again["term"] == first["term"] + 1
        assert again["index"] > first["index"]
        assert "dropped a torn last record" in node.log_text()
        with openai.OpenAI(
            base_url=node.url + "/v1", api_key="x", max_retries=0, timeout=120
        ) as answer:
            response = answer.chat.completions.create(
                model="smollm2-135m",
                messages=[{"role": "user", "content": "Say hello."}],
                max_tokens=8,
            )
        assert response.choices[0].message.content
    finally:
        assert node.stop() == 0, node.log_text()[-4000:]


def test_a_model_that_is_not_ready_in_time_is_a_clear_503(tmp_path: Path, models_dir: Path) -> None:
    # Loading takes seconds; a 0.2 s budget cannot be met, and the client must hear why.
    node = NodeProcess(tmp_path / "home", models_dir, "--preload", "", "--ready-timeout", "0.2")
    node.start()
    try:
        with (
            openai.OpenAI(base_url=node.url + "/v1", api_key="x", max_retries=0, timeout=30) as c,
            pytest.raises(openai.APIStatusError) as caught,
        ):
            c.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}]
            )
        assert caught.value.status_code == 503
        message = str(caught.value)
        assert "smollm2-135m was not ready within 0.2 s" in message
        assert "runner" in message or "download" in message
        # The placement it made stands: the model finishes loading and is then served.
        node.wait_ready()
    finally:
        assert node.stop() == 0, node.log_text()[-4000:]


def test_a_taken_api_port_is_a_one_line_error(tmp_path: Path, models_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "exo.cli",
                "node",
                "--home",
                str(tmp_path / "home"),
                "--api-port",
                str(port),
                "--port",
                str(free_port()),
                "--no-discovery",
                "--preload",
                "",
                "--models-dir",
                str(models_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("exo node: stopping:")
    assert "Traceback" not in result.stderr
