"""The hub client against a local server speaking the hub's protocol: cards from real
repos, a corrupt partial file detected and fetched again, a full disk refused with
numbers, bad repos mapped to errors a user can act on."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exo.models import hub_client
from exo.models.hub import NotAModel, files_for_layers
from exo.models.hub_client import HubClient
from exo.models.hub_errors import NotEnoughDisk, RepoGated, RepoNotFound
from tests.hub.repos import repo_unknown_arch, repo_without_weights, tiny_repo
from tests.hub.server import HubServer

REPO = "exo-test/tiny-llama"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    root = tmp_path_factory.mktemp("repos")
    server = HubServer(tmp_path_factory.mktemp("hub"))
    server.add_repo(REPO, tiny_repo(root / "llama", "llama", layers=4, files=2))
    server.add_repo("exo-test/gated", root / "llama")
    server.gate("exo-test/gated", "tok")
    server.add_repo("exo-test/no-weights", repo_without_weights(root / "none"))
    server.add_repo("exo-test/unknown", repo_unknown_arch(root / "unknown"))
    with server:
        yield server


def client(hub: HubServer, tmp_path: Path, token: str | None = None) -> HubClient:
    return HubClient(cache_dir=tmp_path / "cache", endpoint=hub.url, token=token, offline=False)


def test_a_card_is_read_from_the_repo_and_a_shard_fetches_its_files(
    hub: HubServer, tmp_path: Path
) -> None:
    hub_client_ = client(hub, tmp_path)
    card = hub_client_.describe(REPO)
    assert (card.architecture, card.num_layers, card.revision) == ("llama", 4, hub.commit(REPO))
    assert card.quantization is not None and card.quantization.bits == 4
    assert len(card.layer_bytes) == 4 and all(card.layer_bytes) and card.shared_bytes
    files = files_for_layers(card, 2, 4)
    counted: list[int] = []
    hub_client_.download(card, files, counted.append)
    assert hub_client_.missing(card, files) == []
    assert sum(counted) == sum(f.size for f in card.weight_files if f.name in files) + sum(
        (hub_client_.snapshot_dir(card) / n).stat().st_size
        for n in card.support_files
        if n != "config.json"  # read with the card, before the download
    )
    # Offline, the card comes from the cache, equal in what placement needs.
    offline = HubClient(cache_dir=tmp_path / "cache", offline=True).describe(REPO)
    assert (offline.num_layers, offline.revision, offline.weight_files) == (
        card.num_layers,
        card.revision,
        card.weight_files,
    )


def test_a_corrupt_partial_file_is_detected_and_fetched_again(
    hub: HubServer, tmp_path: Path
) -> None:
    hub_client_ = client(hub, tmp_path)
    card = hub_client_.describe(REPO)
    first = card.weight_files[0]
    partial = hub_client_.partial_path(card, first.name)
    assert partial is not None
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"\0" * (first.size // 2))  # what a damaged earlier attempt left
    hub.reset_counters()
    hub_client_.download(card, (first.name,), lambda _: None)
    blob = hub_client_.snapshot_dir(card) / first.name
    assert hub_client.file_sha256(blob) == first.sha256
    # The resumed half failed the check; the whole file was fetched again.
    assert hub.served_files()[(REPO, first.name)] == first.size // 2 + first.size


def test_too_little_disk_is_refused_with_the_numbers(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_client_ = client(hub, tmp_path)
    card = hub_client_.describe(REPO)

    def nearly_full(_: Any) -> Any:
        return shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000)  # type: ignore[attr-defined]

    monkeypatch.setattr(hub_client.shutil, "disk_usage", nearly_full)
    with pytest.raises(NotEnoughDisk, match=r"needs 0\.\d+ GiB more .* which has 0\.00 GiB free"):
        hub_client_.download(card, files_for_layers(card, 0, 4), lambda _: None)


def test_bad_repos_are_errors_that_say_what_to_do(hub: HubServer, tmp_path: Path) -> None:
    hub_client_ = client(hub, tmp_path)
    with pytest.raises(RepoNotFound, match="no repo exo-test/nope"):
        hub_client_.describe("exo-test/nope")
    with pytest.raises(RepoNotFound, match="no such revision"):
        hub_client_.describe(f"{REPO}@v9")
    with pytest.raises(NotAModel, match="no safetensors weights"):
        hub_client_.describe("exo-test/no-weights")
    with pytest.raises(NotAModel, match="'no_such_arch' is not one mlx-lm supports"):
        hub_client_.describe("exo-test/unknown")
    # Gated: the file list is public, config.json and the weights need the token.
    with pytest.raises(RepoGated, match="set HF_TOKEN"):
        hub_client_.describe("exo-test/gated")
    with pytest.raises(RepoGated, match=r"(check|set) HF_TOKEN"):
        client(hub, tmp_path, token="wrong").describe("exo-test/gated")
    allowed = client(hub, tmp_path, token="tok")
    gated = allowed.describe("exo-test/gated")
    allowed.download(gated, files_for_layers(gated, 0, 4), lambda _: None)
