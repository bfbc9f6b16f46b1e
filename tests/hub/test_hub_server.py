"""The local hub speaks the protocol of the real `huggingface_hub` client, and the repos it
serves load with mlx-lm.

Every test drives the real client (huggingface_hub 2.4). It reads `HF_ENDPOINT` into
`huggingface_hub.constants` at import time, so in-process tests pass `endpoint=` instead;
the child-process test sets the environment from `HubServer.client_env()`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import httpx2
import mlx.core as mx
import mlx.nn as nn
import pytest
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from mlx_lm import load, stream_generate
from mlx_lm.tokenizer_utils import TokenizerWrapper

from tests.hub.repos import (
    INDEX_NAME,
    TINY_ARCHITECTURES,
    bundled_repo,
    layer_of,
    repo_unknown_arch,
    repo_without_weights,
    tiny_repo,
)
from tests.hub.server import HubServer

MiB = 1 << 20
# Big enough that the client's 10 MiB read chunks let it resume past the first one.
BIG = 24 * MiB
TINY = "test-org/tiny-llama"
FILES = "test-org/files"
GATED = "test-org/gated"
TOKEN = "hf_test_token"


@pytest.fixture(autouse=True)
def _client_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No agent-registry fetch (telemetry), and no token from the developer's machine."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Repo directories built once for the module: a tiny model and a bag of files."""
    root = tmp_path_factory.mktemp("sources")
    tiny_repo(root / "tiny", "llama")
    files = root / "files"
    (files / "notes").mkdir(parents=True)
    (files / "config.json").write_text('{"model_type": "llama"}')
    (files / "notes" / "readme.txt").write_text("nested\n")
    rng = random.Random(0)
    (files / "weights.bin").write_bytes(rng.randbytes(BIG))
    (files / "medium.dat").write_bytes(rng.randbytes(MiB + 1))
    return root


@pytest.fixture(scope="module")
def module_hub(sources: Path) -> Iterator[HubServer]:
    with HubServer() as hub:
        hub.add_repo(TINY, sources / "tiny")
        hub.add_repo(FILES, sources / "files")
        hub.add_repo(GATED, sources / "tiny")
        hub.gate(GATED, TOKEN)
        yield hub


@pytest.fixture
def hub(module_hub: HubServer) -> HubServer:
    module_hub.reset_counters()
    return module_hub


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_gets(hub: HubServer) -> list[tuple[str | None, str | None, int]]:
    return [(r.path, r.range, r.status) for r in hub.requests() if r.route == "resolve"]


# Metadata


def test_model_info_lists_files_with_sizes_lfs_hashes_and_commit(
    hub: HubServer, sources: Path
) -> None:
    info = HfApi(endpoint=hub.url).model_info(TINY, files_metadata=True)
    assert info.sha == hub.commit(TINY)
    assert info.id == TINY
    on_disk = {p.name: p for p in (sources / "tiny").iterdir()}
    assert info.siblings is not None
    assert {s.rfilename for s in info.siblings} == set(on_disk)
    for sibling in info.siblings:
        path = on_disk[sibling.rfilename]
        assert sibling.size == path.stat().st_size
        if path.suffix == ".safetensors" or path.stat().st_size > MiB:
            assert sibling.lfs is not None and sibling.lfs.sha256 == sha256_of(path)
        else:
            assert sibling.lfs is None
    assert info.config is not None and info.config["model_type"] == "llama"
    assert info.safetensors is not None and info.safetensors.total > 0
    # Without files metadata the siblings carry names only, as on the hub.
    plain = HfApi(endpoint=hub.url).model_info(TINY, revision=info.sha)
    assert plain.siblings is not None and all(s.size is None for s in plain.siblings)


def test_tree_lists_directories_and_pages_with_link_headers(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.url)
    top = {(type(e).__name__, e.path) for e in api.list_repo_tree(FILES)}
    assert top == {
        ("RepoFile", "config.json"),
        ("RepoFile", "medium.dat"),
        ("RepoFile", "weights.bin"),
        ("RepoFolder", "notes"),
    }
    nested = list(api.list_repo_tree(FILES, path_in_repo="notes", expand=True))
    assert [e.path for e in nested] == ["notes/readme.txt"]
    assert isinstance(nested[0], RepoFile) and nested[0].last_commit is not None
    with HubServer(hub.root, tree_page_size=2) as paged:
        entries = list(HfApi(endpoint=paged.url).list_repo_tree(FILES, recursive=True))
        assert paged.request_counts()["GET tree"] == 3
    assert len(entries) == 5 and sum(isinstance(e, RepoFolder) for e in entries) == 1


def test_file_metadata_etags_are_sha256_for_lfs_and_git_sha1_otherwise(
    hub: HubServer, sources: Path
) -> None:
    commit = hub.commit(FILES)
    small = (sources / "files" / "config.json").read_bytes()
    for name, etag in [
        ("config.json", hashlib.sha1(b"blob %d\0" % len(small) + small).hexdigest()),
        ("weights.bin", sha256_of(sources / "files" / "weights.bin")),
        ("medium.dat", sha256_of(sources / "files" / "medium.dat")),
    ]:
        meta = get_hf_file_metadata(hf_hub_url(FILES, name, endpoint=hub.url))
        assert (meta.etag, meta.commit_hash, meta.xet_file_data) == (etag, commit, None)
        assert meta.size == (sources / "files" / name).stat().st_size


def test_byte_ranges(hub: HubServer, sources: Path) -> None:
    data = (sources / "files" / "medium.dat").read_bytes()
    url = f"{hub.url}/{FILES}/resolve/main/medium.dat"
    for header, status, body in [
        ("bytes=10-19", 206, data[10:20]),
        ("bytes=-5", 206, data[-5:]),
        (f"bytes={len(data) - 3}-", 206, data[-3:]),
        (f"bytes={len(data)}-", 416, None),
        ("bytes=0-1,4-5", 200, data),
    ]:
        response = httpx.get(url, headers={"Range": header})
        assert response.status_code == status, header
        if body is not None:
            assert response.content == body
    assert hub.served_files() == {(FILES, "medium.dat"): len(data) + 10 + 5 + 3}


# Downloads


def test_hf_hub_download_fills_the_cache_once(hub: HubServer, tmp_path: Path) -> None:
    commit = hub.commit(TINY)
    name = "model-00001-of-00002.safetensors"
    path = hf_hub_download(TINY, name, endpoint=hub.url, cache_dir=tmp_path)
    assert Path(path).parent == tmp_path / "models--test-org--tiny-llama" / "snapshots" / commit
    assert sha256_of(path) == sha256_of(hub.repo_dir(TINY) / name)
    assert hub.served_files() == {(TINY, name): Path(path).stat().st_size}
    hub.reset_counters()
    assert hf_hub_download(TINY, name, endpoint=hub.url, cache_dir=tmp_path) == path
    assert hub.bytes_served() == 0
    assert hf_hub_download(TINY, name, revision=commit, endpoint=hub.url, cache_dir=tmp_path)
    # "main" costs one HEAD to learn the commit; a commit pin with the file cached, none.
    assert hub.request_counts() == {"HEAD resolve": 1}


def test_snapshot_download_fetches_only_the_allowed_files(hub: HubServer, tmp_path: Path) -> None:
    index = json.loads((hub.repo_dir(TINY) / INDEX_NAME).read_text())
    # The first of two files holds layers 0 and 1 of 4 (and the embeddings).
    layers = {name: layer_of(name) for name in index["weight_map"]}
    wanted = {
        index["weight_map"][name]
        for name, layer in layers.items()
        if layer is not None and layer < 2
    }
    assert wanted == {"model-00001-of-00002.safetensors"}
    patterns = ["*.json", *wanted]
    folder = Path(
        snapshot_download(TINY, allow_patterns=patterns, endpoint=hub.url, cache_dir=tmp_path)
    )
    fetched = {p.name for p in folder.iterdir()}
    assert fetched == {p.name for p in hub.repo_dir(TINY).iterdir()} - {
        "model-00002-of-00002.safetensors"
    }
    assert {path for _, path in hub.served_files()} == fetched
    hub.reset_counters()
    again = snapshot_download(TINY, allow_patterns=patterns, endpoint=hub.url, cache_dir=tmp_path)
    assert Path(again) == folder
    assert hub.bytes_served() == 0
    # The commit's tree listing is cached on disk too: only the revision is asked.
    assert hub.request_counts() == {"GET model_info": 1}


def test_a_cut_transfer_resumes_with_a_range_request(hub: HubServer, tmp_path: Path) -> None:
    hub.cut_after(FILES, "weights.bin", 21 * MiB)
    started = time.monotonic()
    path = hf_hub_download(FILES, "weights.bin", endpoint=hub.url, cache_dir=tmp_path)
    elapsed = time.monotonic() - started
    assert sha256_of(path) == sha256_of(hub.repo_dir(FILES) / "weights.bin")
    # The client keeps whole 10 MiB chunks: it resumes at 20 MiB, after a 1 s pause.
    assert resolve_gets(hub) == [
        ("weights.bin", None, 200),
        ("weights.bin", None, 200),
        ("weights.bin", f"bytes={20 * MiB}-", 206),
    ]
    assert hub.bytes_served(FILES) == 21 * MiB + BIG - 20 * MiB
    assert 1.0 <= elapsed < 10
    assert not list(tmp_path.rglob("*.incomplete"))


def test_a_cut_inside_the_first_chunk_restarts_from_zero(hub: HubServer, tmp_path: Path) -> None:
    """Pins a client behaviour exo's downloader must expect: no Range below 10 MiB."""
    hub.cut_after(FILES, "medium.dat", MiB // 2)
    hf_hub_download(FILES, "medium.dat", endpoint=hub.url, cache_dir=tmp_path)
    assert [r for _, r, _ in resolve_gets(hub)] == [None, None, None]
    assert hub.bytes_served() == MiB // 2 + MiB + 1


def test_throttle_paces_the_transfer(hub: HubServer, tmp_path: Path) -> None:
    hub.set_throttle(4 * MiB)
    try:
        started = time.monotonic()
        hf_hub_download(FILES, "medium.dat", endpoint=hub.url, cache_dir=tmp_path)
        assert time.monotonic() - started >= 0.2
    finally:
        hub.set_throttle(None)


# Errors


def test_unknown_repo_revision_and_file(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError) as missing:
        api.model_info("test-org/missing")
    assert not isinstance(missing.value, GatedRepoError)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-org/missing", "config.json", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("test-org/missing", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(TINY, revision="v9")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            TINY, "config.json", revision="0" * 40, endpoint=hub.url, cache_dir=tmp_path
        )
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(TINY, "nope.json", endpoint=hub.url, cache_dir=tmp_path)


def test_gated_repo_needs_the_token(hub: HubServer, tmp_path: Path) -> None:
    info = HfApi(endpoint=hub.url).model_info(GATED)  # metadata stays public, as on the hub
    assert info.gated == "manual"
    for token in (False, "hf_wrong"):
        with pytest.raises(GatedRepoError):
            hf_hub_download(GATED, "config.json", token=token, endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(GatedRepoError):
        snapshot_download(GATED, token=False, endpoint=hub.url, cache_dir=tmp_path)
    assert hub.bytes_served() == 0
    folder = snapshot_download(GATED, token=TOKEN, endpoint=hub.url, cache_dir=tmp_path)
    assert {p.name for p in Path(folder).iterdir()} == {
        p.name for p in hub.repo_dir(GATED).iterdir()
    }


def test_offline_refuses_connections_and_the_client_fails_fast(
    sources: Path, tmp_path: Path
) -> None:
    with HubServer() as hub:
        hub.add_repo(TINY, sources / "tiny")
        api = HfApi(endpoint=hub.url)
        cached = snapshot_download(
            TINY, allow_patterns=["*.json"], endpoint=hub.url, cache_dir=tmp_path
        )
        hub.set_offline(True)
        hub.reset_counters()
        started = time.monotonic()
        with pytest.raises(httpx2.ConnectError):
            api.model_info(TINY)
        # snapshot_download treats ConnectError as "no connection": cache, or a clear error.
        again = snapshot_download(
            TINY, allow_patterns=["*.json"], endpoint=hub.url, cache_dir=tmp_path
        )
        assert again == cached
        with pytest.raises(LocalEntryNotFoundError):
            snapshot_download(TINY, endpoint=hub.url, cache_dir=tmp_path / "empty")
        path = hf_hub_download(TINY, "config.json", endpoint=hub.url, cache_dir=tmp_path)
        assert Path(path).parent == Path(cached)
        assert time.monotonic() - started < 2  # milliseconds when idle
        assert hub.requests() == []  # nothing got through
        hub.set_offline(False)
        assert api.model_info(TINY).sha == hub.commit(TINY)


def test_a_child_process_downloads_through_the_environment(hub: HubServer, tmp_path: Path) -> None:
    code = (
        "from huggingface_hub import snapshot_download;"
        f"print(snapshot_download({TINY!r}, allow_patterns=['config.json']))"
    )
    env = {**os.environ, **hub.client_env(), "HF_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder == tmp_path / "hub" / "models--test-org--tiny-llama" / "snapshots" / hub.commit(
        TINY
    )
    assert hub.served_files() == {(TINY, "config.json"): (folder / "config.json").stat().st_size}
    assert "GET agent_harnesses" not in hub.request_counts()


# Repos


def test_bundled_repo_is_split_by_layers_and_answers_like_the_bundled_model(
    tmp_path: Path,
) -> None:
    repo = bundled_repo(tmp_path / "bundled", files=3)
    assert not (repo / ".exo-converted.json").exists()
    index = json.loads((repo / INDEX_NAME).read_text())
    layers: dict[str, set[int]] = {}
    for name, file in index["weight_map"].items():
        layer = layer_of(name)
        if layer is not None:
            layers.setdefault(file, set()).add(layer)
        elif "embed" in name:
            assert file == "model-00001-of-00003.safetensors"
        else:
            assert file == "model-00003-of-00003.safetensors"
    assert [sorted(layers[f]) for f in sorted(layers)] == [
        list(range(0, 10)),
        list(range(10, 20)),
        list(range(20, 30)),
    ]
    sizes = sum((repo / f).stat().st_size for f in layers)
    assert index["metadata"]["total_size"] < sizes
    model, tokenizer = load(str(repo))[:2]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        add_generation_prompt=True,
    )
    text = "".join(r.text for r in stream_generate(model, tokenizer, prompt, max_tokens=24))
    assert "Paris" in text


@pytest.mark.parametrize("quantize", [True, False], ids=["4bit", "bf16"])
@pytest.mark.parametrize("model_type", TINY_ARCHITECTURES)
def test_tiny_repos_download_load_and_generate(
    model_type: str, quantize: bool, tmp_path: Path
) -> None:
    started = time.monotonic()
    source = tiny_repo(tmp_path / "src", model_type, quantize=quantize, layers=4, files=2)
    assert time.monotonic() - started < 5  # about 0.15 s on an idle 2-core machine
    assert sum(p.stat().st_size for p in source.iterdir()) < 20 * MiB
    with HubServer() as hub:
        hub.add_repo(f"test-org/tiny-{model_type}", source)
        folder = snapshot_download(
            f"test-org/tiny-{model_type}", endpoint=hub.url, cache_dir=tmp_path / "cache"
        )
    model, tokenizer, config = cast(
        tuple[nn.Module, TokenizerWrapper, dict[str, Any]], load(folder, return_config=True)
    )
    assert config["model_type"] == model_type and ("quantization" in config) == quantize
    if not quantize:
        model.set_dtype(mx.float32)  # MLX's CPU gather matmul (MoE) is float32 only
    tokens = [r.token for r in stream_generate(model, tokenizer, "Hello there", max_tokens=4)]
    assert len(tokens) >= 1


def test_tiny_repos_are_deterministic(tmp_path: Path) -> None:
    with HubServer(tmp_path / "root") as hub:
        tiny_repo(hub.repo_dir("a/one"), "qwen3")
        tiny_repo(hub.repo_dir("a/two"), "qwen3")
        tiny_repo(hub.repo_dir("a/three"), "qwen3", seed=1)
        assert hub.commit("a/one") == hub.commit("a/two") != hub.commit("a/three")


def test_bad_repos_fail_to_load(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load(str(repo_without_weights(tmp_path / "no-weights")))
    with pytest.raises(ValueError, match="no_such_arch"):
        load(str(repo_unknown_arch(tmp_path / "unknown")))
