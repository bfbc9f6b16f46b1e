"""The hub side of models: reading a repo's card and fetching a shard's files, through
`huggingface_hub`'s own code and cache. Blocking: actors call it through
`Environment.run_blocking`.

What `huggingface_hub` gives and exo relies on: `HF_ENDPOINT` (mirrors), `HF_TOKEN`
(gated repos), `HF_HOME`/`HF_HUB_CACHE` (the cache every hub client on the machine
shares, so models fetched by `mlx_lm` or `hf download` are used as they are),
`HF_HUB_OFFLINE`, and resumable downloads (a killed download continues from its
`.incomplete` file). What exo adds: only the files a shard needs, the sha256 check of
every LFS file after it arrives (the client checks sizes only), a free-disk check that
names the numbers, and progress as bytes for the download actor's reports.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from exo.events.facts import ModelCard
from exo.events.ids import ModelId
from exo.models.hub import (
    WEIGHT_SUFFIX,
    NotAModel,
    RepoFile,
    RepoSnapshot,
    TensorEntry,
    bytes_of,
    card_from_snapshot,
    model_id_for,
    parse_model_name,
)
from exo.models.hub_errors import (
    CorruptDownload,
    DownloadStopped,
    HubError,
    HubUnreachable,
    NotEnoughDisk,
    RepoNotFound,
    translated,
)
from exo.models.hub_files import (
    SHA256_HEX,
    blob_name,
    byte_counter,
    file_sha256,
    git_blob_id,
    link_blob,
    remove_cached,
    snapshot_of_directory,
    write_ref,
)

log = logging.getLogger("exo.hub")

# Files fetched at once per download.
DOWNLOAD_WORKERS = 4
# Kept free beyond what a download needs, so the disk never fills to the last byte.
DISK_MARGIN = 256 * 1024 * 1024
# Bytes written at a time while downloading: at most this much of a file is lost to a kill.
RESUME_CHUNK = 1024 * 1024


def mlx_lm_architectures() -> frozenset[str]:
    """The model types the installed mlx-lm has a module for, found without importing it
    (the node process never imports MLX)."""
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    return frozenset(p.stem for p in models.glob("*.py") if not p.stem.startswith("_"))


def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache_dir(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


class HubClient:
    """One hub endpoint, token and cache; every argument defaults to huggingface_hub's
    own reading of the environment."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        token: str | None = None,
        endpoint: str | None = None,
        offline: bool | None = None,
    ) -> None:
        from huggingface_hub import constants

        # http_get writes a response in chunks of this size: 10 MiB by default, which is
        # what a kill loses of each file and how coarse progress is. 1 MiB keeps both fine.
        constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, RESUME_CHUNK)
        # Its own bars (reading safetensors headers) would only clutter a node's log;
        # progress reaches users as download reports and `exo models` bars.
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        self.cache_dir = cache_dir or default_cache_dir()
        self.token = token
        self.endpoint = endpoint
        self.offline = constants.HF_HUB_OFFLINE if offline is None else offline

    # --- cards ---------------------------------------------------------------------

    def describe(self, name: str) -> ModelCard:
        """The card of "owner/name[@revision]", read from the hub, or from the cache when
        offline or when the hub does not answer and the cache has the snapshot."""
        parsed = parse_model_name(name)
        if parsed is None:
            raise RepoNotFound(f"{name!r} is not a hub repo id (owner/name[@revision])")
        repo_id, revision = parsed
        model_id = model_id_for(repo_id, revision)
        if not self.offline:
            try:
                snapshot = self._hub_snapshot(repo_id, revision)
            except HubUnreachable:
                cached = self.cached_snapshot(repo_id, revision)
                if cached is None:
                    raise
                log.warning("hub unreachable; using the cached snapshot of %s", repo_id)
                snapshot = cached
        else:
            cached = self.cached_snapshot(repo_id, revision)
            if cached is None:
                raise RepoNotFound(
                    f"{repo_id} is not in the cache at {self.cache_dir} and HF_HUB_OFFLINE "
                    "is set; download it first (exo models download) or unset HF_HUB_OFFLINE"
                )
            snapshot = cached
        return card_from_snapshot(model_id, snapshot, known_architectures=mlx_lm_architectures())

    def _hub_snapshot(self, repo_id: str, revision: str | None) -> RepoSnapshot:
        from huggingface_hub import HfApi, hf_hub_download

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(repo_id, revision=revision, files_metadata=True)
            sha = info.sha or revision or "main"
            files = tuple(
                RepoFile(
                    s.rfilename,
                    int(s.size or (s.lfs.size if s.lfs else 0) or 0),
                    str(s.lfs.sha256) if s.lfs else "",
                    "" if s.lfs else str(s.blob_id or ""),
                )
                for s in info.siblings or ()
            )
            names = {f.name for f in files}
            if "config.json" not in names:
                raise NotAModel(f"{repo_id}: the repo has no config.json")
            config_path = hf_hub_download(
                repo_id,
                "config.json",
                revision=sha,
                cache_dir=self.cache_dir,
                token=self.token,
                endpoint=self.endpoint,
            )
            config = json.loads(Path(str(config_path)).read_text())
            tensors: tuple[TensorEntry, ...] = ()
            weight_map: dict[str, str] = {}
            if any(n.endswith(WEIGHT_SUFFIX) for n in names) and (
                "model.safetensors" in names or "model.safetensors.index.json" in names
            ):
                meta = api.get_safetensors_metadata(repo_id, revision=sha)
                weight_map = dict(meta.weight_map)
                tensors = tuple(
                    TensorEntry(
                        tensor,
                        file,
                        str(entry.dtype),
                        tuple(entry.shape),
                        entry.data_offsets[1] - entry.data_offsets[0],
                    )
                    for file, file_meta in sorted(meta.files_metadata.items())
                    for tensor, entry in sorted(file_meta.tensors.items())
                )
        except Exception as error:
            raise translated(repo_id, error) from error
        modified = info.last_modified.isoformat() if info.last_modified else ""
        if sha != (revision or "main"):
            # As hub clients do for a branch or tag: offline, the name finds the commit.
            write_ref(repo_cache_dir(self.cache_dir, repo_id), revision or "main", sha)
        return RepoSnapshot(repo_id, sha, files, config, tensors, weight_map, modified)

    def cached_snapshot(self, repo_id: str, revision: str | None) -> RepoSnapshot | None:
        """The snapshot as the local cache holds it, or None when it has none."""
        repo_dir = repo_cache_dir(self.cache_dir, repo_id)
        ref = revision or "main"
        sha = ref
        ref_file = repo_dir / "refs" / ref
        if ref_file.is_file():
            sha = ref_file.read_text().strip()
        snapshot = repo_dir / "snapshots" / sha
        if not (snapshot / "config.json").is_file():
            return None
        return snapshot_of_directory(snapshot, repo_id, sha)

    def describe_directory(self, path: Path, name: str) -> ModelCard:
        """The card of a local model directory (MLX or Hugging Face layout), served as `name`."""
        if not (path / "config.json").is_file():
            raise NotAModel(f"{path} has no config.json: not a model directory")
        snapshot = snapshot_of_directory(path, name, "")
        return card_from_snapshot(
            ModelId(name),
            snapshot,
            source="local",
            location=str(path.resolve()),
            known_architectures=mlx_lm_architectures(),
        )

    # --- files ---------------------------------------------------------------------

    def snapshot_dir(self, card: ModelCard) -> Path:
        if card.source == "local":
            return Path(card.location)
        return repo_cache_dir(self.cache_dir, card.location) / "snapshots" / card.revision

    def missing(self, card: ModelCard, files: Iterable[str]) -> list[str]:
        """The files not in the snapshot yet, or not of the size the card says (torn or
        replaced files are fetched again)."""
        directory = self.snapshot_dir(card)
        sizes = {f.name: f.size for f in card.weight_files}
        out: list[str] = []
        for name in files:
            path = directory / name
            try:
                size = path.stat().st_size
            except OSError:
                out.append(name)
                continue
            if name in sizes and sizes[name] and size != sizes[name]:
                out.append(name)
        return out

    def download(
        self, card: ModelCard, files: Iterable[str], on_bytes: Callable[[int], None]
    ) -> None:
        """Fetch the named files of the card's revision into the cache, verified.

        `on_bytes(n)` is called from worker threads as bytes arrive (negative when a
        corrupt file's bytes are discarded)."""
        if card.source == "local":
            missing = self.missing(card, files)
            if missing:
                raise NotAModel(f"{card.location} lacks {', '.join(missing)}")
            return
        needed = self.missing(card, files)
        if not needed:
            return
        self.check_disk(card, needed)
        with ThreadPoolExecutor(DOWNLOAD_WORKERS) as pool:
            for done in [pool.submit(self._fetch_verified, card, n, on_bytes) for n in needed]:
                done.result()

    def partial_path(self, card: ModelCard, name: str) -> Path | None:
        """Where a copy of a file from a peer accumulates: the same partial file a hub
        download of it uses (named by the hub's etag: the sha256 of an LFS file, the git
        blob id of a small one), so either can continue the other. None for files whose
        hash the card does not know."""
        etag = blob_name(card, name)
        if card.source != "hub" or not etag:
            return None
        return repo_cache_dir(self.cache_dir, card.location) / "blobs" / f"{etag}.exo-partial"

    def complete_partial(self, card: ModelCard, name: str) -> None:
        """Verify a finished partial file against the card's hash and publish it in the
        cache (blob and snapshot link); a mismatch deletes it and raises `CorruptDownload`."""
        partial = self.partial_path(card, name)
        if partial is None:
            raise CorruptDownload(f"{name} of {card.model_id} has no known hash")
        blob = partial.with_suffix("")
        digest = file_sha256(partial) if len(blob.name) == SHA256_HEX else git_blob_id(partial)
        if digest != blob.name:
            partial.unlink()
            raise CorruptDownload(f"{name} of {card.model_id} from a peer failed its sha256 check")
        os.replace(partial, blob)
        link_blob(blob, self.snapshot_dir(card) / name)

    def check_disk(self, card: ModelCard, names: list[str]) -> None:
        need = bytes_of(card, names)
        where = self.cache_dir
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        if free < need + DISK_MARGIN:
            raise NotEnoughDisk(
                f"{card.model_id} needs {_gib(need)} more on the disk of {self.cache_dir}, "
                f"which has {_gib(free)} free; free some space (exo models rm) or set HF_HOME"
            )

    def _fetch_verified(self, card: ModelCard, name: str, on_bytes: Callable[[int], None]) -> None:
        expected = next((f.sha256 for f in card.weight_files if f.name == name), "")
        for attempt in range(2):
            path = Path(self._fetch(card, name, on_bytes))
            if not expected or file_sha256(path) == expected:
                return
            size = path.stat().st_size
            log.warning("%s of %s failed its sha256 check; fetching it again", name, card.model_id)
            remove_cached(path)
            on_bytes(-size)
            if attempt == 1:
                raise CorruptDownload(
                    f"{name} of {card.model_id} does not match the hub's sha256 after two "
                    "downloads; the mirror may serve a damaged file"
                )

    def _fetch(self, card: ModelCard, name: str, on_bytes: Callable[[int], None]) -> str:
        """One file into the cache, resumable across restarts: bytes go to a partial file
        named by the blob's etag, which the next attempt continues with a Range request.

        Why not `hf_hub_download`: since huggingface_hub 1.x it writes each attempt to a
        process-unique temporary file and deletes it on failure, so a node killed at 90 %
        of a 40 GB file starts again from zero. The cache layout written here (blob named
        by etag, snapshot symlink, refs) is the one every hub client reads.
        """
        from filelock import FileLock
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        repo_dir = repo_cache_dir(self.cache_dir, card.location)
        pointer = repo_dir / "snapshots" / card.revision / name
        try:
            url = hf_hub_url(card.location, name, revision=card.revision, endpoint=self.endpoint)
            meta = get_hf_file_metadata(
                url, token=self.token, endpoint=self.endpoint, retry_on_errors=True
            )
            etag = (meta.etag or "").strip('"').removeprefix("W/").strip('"')
            if not etag:
                raise HubError(f"the hub sent no etag for {name} of {card.location}")
            blobs = repo_dir / "blobs"
            blobs.mkdir(parents=True, exist_ok=True)
            blob = blobs / etag
            partial = blobs / f"{etag}.exo-partial"
            with FileLock(str(blobs / f"{etag}.exo-lock")):
                if not blob.exists():
                    done = partial.stat().st_size if partial.exists() else 0
                    if meta.size is not None and done > meta.size:
                        partial.unlink()
                        done = 0
                    counter = byte_counter(on_bytes)
                    with partial.open("ab") as out:
                        http_get(
                            meta.location,
                            out,
                            resume_size=done,
                            headers=build_hf_headers(token=self.token),
                            expected_size=meta.size,
                            displayed_filename=name,
                            tqdm_class=cast(Any, counter),
                        )
                    os.replace(partial, blob)
            link_blob(blob, pointer)
        except DownloadStopped:
            raise
        except Exception as error:
            raise translated(card.location, error) from error
        return str(pointer)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
