"""`exo status`: the summary of a node's `GET /state` (nodes, master and term, links,
instances with shards and runners, downloads) as text and JSON, and a clear failure when
no node answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exo import cli
from exo.api.access import KEY_HINT
from exo.status_cli import render, summarize
from tests.api.fakes import FakeBackend
from tests.api.helpers import running_in_thread
from tests.integration.nodes import free_port

A, B = "node-aaaaaaaaaaaa", "node-bbbbbbbbbbbb"
PROFILE = {
    "platform": "linux-x86_64",
    "accelerator": "cpu",
    "cpu_cores": 2,
    "memory_total": 16 * 1024**3,
    "memory_available": 8 * 1024**3,
    "api_port": 52415,
    "peer_port": 52416,
    "worker": True,
    "ring_port": 31700,
}
VIEW: dict[str, Any] = {
    "node_id": B,
    "master": A,
    "term": 3,
    "index": 120,
    "hash": "0" * 64,
    "state": {
        "nodes": {A: {**PROFILE, "hostname": "alpha"}, B: {**PROFILE, "hostname": "beta"}},
        "links": {
            A: {B: {"peer": B, "latency_us": 1500, "bandwidth_bps": 940_000_000, "address": ""}},
            B: {A: {"peer": A, "latency_us": 1700, "bandwidth_bps": None, "address": ""}},
        },
        "instances": {
            "inst-1": {
                "instance_id": "inst-1",
                "model": "smollm2-135m",
                "strategy": "pipeline",
                "shards": [
                    {"node_id": B, "rank": 1, "start_layer": 15, "end_layer": 30},
                    {"node_id": A, "rank": 0, "start_layer": 0, "end_layer": 15},
                ],
                "ring": [],
            }
        },
        "runners": {"inst-1": {A: {"phase": "ready", "detail": "", "restarts": 0}}},
        "downloads": {
            A: {"smollm2-135m": {"phase": "complete", "bytes_done": 100, "bytes_total": 100}},
            B: {
                "smollm2-135m": {
                    "phase": "downloading",
                    "bytes_done": 25_000_000,
                    "bytes_total": 100_000_000,
                    "rate": 5_000_000,
                }
            },
        },
        "in_flight": {A: {"inst-1": 2}, B: {"inst-1": 1}},
        "request_counters": {"inst-1": {"finished": 7, "failed": 1}},
    },
}


def test_the_summary_says_who_leads_what_runs_where_and_what_is_fetched() -> None:
    summary = summarize(VIEW)
    assert (summary["node"], summary["master"], summary["term"]) == (B, A, 3)
    assert [(n["id"], n["master"]) for n in summary["nodes"]] == [(A, True), (B, False)]
    assert summary["links"][0] == {
        "from": A,
        "to": B,
        "latency_ms": 1.5,
        "bandwidth_bps": 940_000_000,
    }
    (instance,) = summary["instances"]
    assert [(s["rank"], s["node"], s["layers"], s["runner"]) for s in instance["shards"]] == [
        (0, A, [0, 15], "ready"),
        (1, B, [15, 30], "absent"),
    ]
    assert (instance["in_flight"], instance["finished"], instance["failed"]) == (3, 7, 1)
    text = render(summary)
    assert f"cluster: master {A}, term 3, index 120; asked {B}" in text
    assert "alpha" in text and "8.0 of 16.0 GiB free" in text
    assert f"{A} -> {B}  1.50 ms  940 Mbit/s" in text
    assert "bandwidth not measured yet" in text
    assert f"rank 1  {B}  layers [15, 30)  runner absent" in text
    assert "downloading  25.0 of 100.0 MB (25%), 5.0 MB/s, 15 s left" in text


def test_no_node_answering_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["status", "--url", url]) == 1
    assert f"exo status: cannot read {url}/state" in capsys.readouterr().err


def test_an_empty_cluster_renders() -> None:
    empty = {"node_id": A, "master": None, "term": 0, "index": 0, "state": {}}
    text = render(summarize(empty))
    assert "master none" in text and "nodes (0)" in text
    assert json.loads(json.dumps(summarize(empty)))["instances"] == []
    assert text.endswith("\n")


def test_a_keyed_node_is_read_with_the_flag_or_exo_api_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXO_API_KEY", raising=False)
    with running_in_thread(FakeBackend(state=VIEW), api_keys=["k1", "k2"]) as url:
        assert cli.main(["status", "--url", url, "--json"]) == 1
        assert f"{url}/state: 401: {KEY_HINT}" in capsys.readouterr().err
        assert cli.main(["status", "--url", url, "--json", "--api-key", "k2"]) == 0
        assert json.loads(capsys.readouterr().out)["master"] == A
        monkeypatch.setenv("EXO_API_KEY", "k1,k2")
        assert cli.main(["status", "--url", url]) == 0
        assert f"cluster: master {A}" in capsys.readouterr().out
