"""The files of the hub's cache as exo reads and writes them: refs, snapshot links to
blobs, a snapshot read back from a directory, safetensors headers, content hashes, and
byte progress from the download's worker threads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exo.events.facts import ModelCard
from exo.models.hub import WEIGHT_SUFFIX, RepoFile, RepoSnapshot, TensorEntry, tensor_bytes
from exo.models.hub_errors import DownloadStopped

SHA256_HEX = 64
SHA1_HEX = 40


def write_ref(repo_dir: Path, ref: str, sha: str) -> None:
    path = repo_dir / "refs" / ref
    with contextlib.suppress(OSError):
        if path.is_file() and path.read_text() == sha:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(sha)
        os.replace(tmp, path)


def link_blob(blob: Path, pointer: Path) -> None:
    """The snapshot's entry for a file: a relative symlink to its blob, as the cache has."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, pointer.parent)
    if pointer.is_symlink() or pointer.exists():
        if pointer.is_symlink() and os.readlink(pointer) == target:
            return
        pointer.unlink()
    tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, pointer)


def snapshot_of_directory(directory: Path, repo_id: str, revision: str) -> RepoSnapshot:
    """A snapshot read from files on disk: a cache snapshot or a local model directory.

    Weight files the index names but the directory lacks (a shard's partial download)
    are listed with size 0; tensors are read only when every weight file is present."""
    files: dict[str, RepoFile] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        target = path.resolve()
        sha = target.name if len(target.name) == SHA256_HEX else ""
        blob_id = target.name if len(target.name) == SHA1_HEX else ""
        files[path.name] = RepoFile(path.name, target.stat().st_size, sha, blob_id)
    config = json.loads((directory / "config.json").read_text())
    weight_map: dict[str, str] = {}
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = dict(json.loads(index.read_text()).get("weight_map", {}))
        for file in sorted(set(weight_map.values())):
            files.setdefault(file, RepoFile(file, 0))
    weights = [f for f in files.values() if f.name.endswith(WEIGHT_SUFFIX)]
    tensors: tuple[TensorEntry, ...] = ()
    if weights and all((directory / f.name).is_file() for f in weights):
        tensors = tuple(t for f in weights for t in read_tensors(directory / f.name))
    return RepoSnapshot(repo_id, revision, tuple(files.values()), config, tensors, weight_map)


def read_tensors(path: Path) -> list[TensorEntry]:
    """Every tensor of a safetensors file, from its header (8-byte length, then JSON)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    out: list[TensorEntry] = []
    for name, entry in sorted(header.items()):
        if name == "__metadata__":
            continue
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = entry.get("data_offsets", (0, tensor_bytes(entry["dtype"], shape)))
        out.append(TensorEntry(name, path.name, str(entry["dtype"]), shape, int(end) - int(begin)))
    return out


def blob_name(card: ModelCard, name: str) -> str:
    """The hub's etag of a file of the card ("" when the card does not know it)."""
    sha = next((f.sha256 for f in card.weight_files if f.name == name), "")
    if len(sha) == SHA256_HEX:
        return sha
    blobs = dict(zip(card.support_files, card.support_blobs, strict=False))
    blob = blobs.get(name, "")
    return blob if len(blob) in (SHA1_HEX, SHA256_HEX) else ""


def git_blob_id(path: Path) -> str:
    """git's id of a file's content: sha1 over "blob <size>\0" and the bytes."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ByteTally:
    """Bytes done, added to from a download's worker threads (`add` is the `on_bytes`
    callback of `HubClient.download`). Once stopped, `add` raises `DownloadStopped`, which
    ends every worker at its next chunk (partial files stay, to be continued)."""

    def __init__(self, done: int = 0) -> None:
        self.done = done
        self.stopped = False
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            if self.stopped:
                raise DownloadStopped("the download was stopped")
            self.done += n

    def stop(self) -> None:
        with self._lock:
            self.stopped = True


def byte_counter(on_bytes: Callable[[int], None]) -> type:
    """A progress class for `hf_hub_download(tqdm_class=...)` that reports bytes: the
    client builds it with tqdm's keyword arguments and calls `update(n)` per chunk."""

    class ByteCounter:
        def __init__(self, *_: Any, initial: int = 0, **__: Any) -> None:
            if initial:  # resumed from an .incomplete file: those bytes are here
                on_bytes(int(initial))

        def update(self, n: float | None = 1) -> None:
            if n:
                on_bytes(int(n))

        def close(self) -> None:
            pass

        def __enter__(self) -> ByteCounter:
            return self

        def __exit__(self, *_: object) -> None:
            pass

    return ByteCounter


def remove_cached(path: Path) -> None:
    """Drop a cached file: the snapshot's link and the blob behind it."""
    blob = path.resolve()
    for p in {path, blob}:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
