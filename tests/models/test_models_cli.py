"""`exo models download|list|info|rm` as a user runs them: a real process, a local server
speaking the hub's protocol, a fresh HF_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exo.events.codec import from_plain
from exo.events.facts import ModelCard
from exo.models.hub import files_for_layers
from tests.hub.repos import tiny_repo
from tests.hub.server import HubServer

REPO = "exo-test/tiny-qwen3"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    server = HubServer(tmp_path_factory.mktemp("hub"))
    server.add_repo(REPO, tiny_repo(tmp_path_factory.mktemp("repo") / "r", "qwen3", files=2))
    with server:
        yield server


def exo(hub: HubServer, hf_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **hub.client_env(), "HF_HOME": str(hf_home)}
    return subprocess.run(
        [sys.executable, "-m", "exo.cli", "models", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_download_list_info_and_rm_work_on_the_hub_cache(hub: HubServer, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    info = exo(hub, hf_home, "info", REPO, "--json")
    assert info.returncode == 0, info.stderr
    card = json.loads(info.stdout)
    assert (card["architecture"], card["num_layers"]) == ("qwen3", 4)
    assert [f["name"] for f in card["weight_files"]] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    # One shard's files only: the first file holds layers 0-1 and the embeddings.
    shard = exo(hub, hf_home, "download", REPO, "--layers", "0:2")
    assert shard.returncode == 0, shard.stderr
    snapshot = Path(shard.stdout.strip().rsplit(" is in ", 1)[1])
    read = from_plain(card, ModelCard)
    wanted = sorted(n for n in files_for_layers(read, 0, 2) if n.endswith(".safetensors"))
    assert sorted(p.name for p in snapshot.glob("*.safetensors")) == wanted
    sizes = {f["name"]: f["size"] for f in card["weight_files"]}
    hub.reset_counters()
    whole = exo(hub, hf_home, "download", REPO)
    assert whole.returncode == 0, whole.stderr
    assert "of" in whole.stdout and f"{REPO} (" in whole.stdout  # plain progress lines
    assert sorted(p.name for p in snapshot.glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    # What the shard download fetched is not fetched again (reading the card takes only
    # ranged reads of the safetensors headers).
    whole_gets = {r.path for r in hub.requests() if r.method == "GET" and r.range is None}
    assert not whole_gets & set(wanted), whole_gets
    assert set(sizes) - set(wanted) <= whole_gets
    listed = exo(hub, hf_home, "list")
    assert REPO in listed.stdout, listed.stdout
    readable = exo(hub, hf_home, "info", REPO)
    assert "architecture:  qwen3, 4 layers" in readable.stdout
    removed = exo(hub, hf_home, "rm", REPO)
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
    assert REPO not in exo(hub, hf_home, "list").stdout


def test_errors_are_one_line_with_a_nonzero_status(hub: HubServer, tmp_path: Path) -> None:
    missing = exo(hub, tmp_path / "hf", "download", "exo-test/no-such-repo")
    assert missing.returncode == 1
    assert missing.stderr.startswith("exo models: no repo exo-test/no-such-repo")
    bad = exo(hub, tmp_path / "hf", "download", REPO, "--layers", "3:9")
    assert bad.returncode == 2 and "layers must lie in [0, 4)" in bad.stderr
    absent = exo(hub, tmp_path / "hf", "rm", "exo-test/not-cached")
    assert absent.returncode == 1 and "is not in" in absent.stderr
