"""`exo bench` as a user runs it: a subprocess against a real node, the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.integration.nodes import NodeProcess

pytestmark = pytest.mark.slow


async def bench(node: NodeProcess, *argv: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "exo.cli", "bench", "--url", node.url, *argv]
    with trio.fail_after(180):  # the first request loads the model (no preload)
        return await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )


async def test_a_small_sweep_writes_its_json_and_plot(node: NodeProcess, tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    done = await bench(
        node,
        *("--prompt-tokens", "16", "--gen-tokens", "4", "--concurrency", "1,2"),
        *("--requests", "2", "--json", str(out), "--plot", str(png)),
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    table = done.stdout.decode()
    assert table.startswith("placement") and "TTFT ms" in table
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["model"] == "smollm2-135m" and doc["endpoint"] == "completions"
    configs = doc["configurations"]
    assert [c["config"]["concurrency"] for c in configs] == [1, 2]
    for config in configs:
        assert config["error"] is None
        summary = config["summary"]
        assert (summary["requests"], summary["ok"], summary["rejected"]) == (2, 2, 0)
        for field in ("ttft", "inter_token", "max_gap", "prefill_tps", "decode_tps", "latency"):
            assert set(summary[field]) >= {"p50", "p90", "p99", "max"}, field
        assert summary["aggregate_tps"] > 0
        assert len(config["requests"]) == 2
        for request in config["requests"]:
            assert request["outcome"] == "ok"
            assert request["prompt_tokens"] == 16  # exact to the token
            assert request["completion_tokens"] == 4  # ignore_eos: exactly as many as asked
            assert len(request["chunk_times"]) >= 1 and request["metrics"]["ttft"] > 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


async def test_placements_and_their_errors(node: NodeProcess) -> None:
    done = await bench(
        node,
        *("--strategy", "pipeline", "--nodes", "1,2", "--prompt-tokens", "8"),
        *("--gen-tokens", "2", "--requests", "1", "--no-progress"),
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rows = done.stdout.decode().splitlines()
    assert rows[1].startswith("pipeline x1") and " 1 " in rows[1]
    assert "the cluster has 1 worker node(s)" in rows[2]
    [instance] = node.get("/instances")["instances"]
    assert instance["strategy"] == "pipeline" and instance["status"] == "ready"


async def test_an_unknown_model_fails_with_one_line(node: NodeProcess) -> None:
    done = await bench(node, "--model", "no-such-model", "--gen-tokens", "2")
    assert done.returncode == 1
    assert "does not exist" in done.stderr.decode() and done.stdout == b""
