"""A local HTTP server that speaks the Hugging Face hub's protocol to the real client.

Why: tests (and exo nodes started by tests) must exercise real hub downloads without the
internet. `HubServer` serves model repos laid out on disk as `root/<org>/<name>/<files>` with
the routes, headers and error codes `huggingface_hub` 2.4 reads, so `HfApi`, `hf_hub_download`
and `snapshot_download` run unmodified against it, and it counts what it serves and can
inject faults (a dropped transfer, an unreachable hub, a slow link).

What the client needs, as read from huggingface_hub 2.4.0:

- `GET /api/models/{repo}[/revision/{rev}]` (`model_info`, `repo_info`; `?blobs=true` adds
  sizes, blob ids and LFS sha256 to `siblings`) and `GET /api/models/{repo}/tree/{rev}[/{dir}]`
  (`list_repo_tree`, which `snapshot_download` calls with `recursive=true`; pages are linked
  with a GitHub-style `Link: <...>; rel="next"` header).
- `HEAD` / `GET /{repo}/resolve/{rev}/{path}`: the client takes the commit from
  `X-Repo-Commit`, the cache key from `X-Linked-Etag` or `ETag` (sha256 for LFS files, the git
  blob sha1 otherwise) and the size from `X-Linked-Size` or `Content-Length`; it resumes with
  `Range: bytes=N-`. The real hub redirects LFS files to a CDN; the client is just as happy
  with a direct 200 (it only uses the redirect's `Location` as the download URL), so files are
  served in place.
- Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`,
  `GatedRepo`) and a JSON `{"error": ...}` body; `hf_raise_for_status` maps the code to
  `RepositoryNotFoundError` & co. The code is required here: the client's fallback that
  treats a bare 401 as "repo not found" only matches `https://` URLs.
- Gated repos behave like the hub's: metadata and listings are public, file contents need
  `Authorization: Bearer <token>` (none: 401, wrong token: 403, both `GatedRepo`).
- `GET /api/agent-harnesses`: the client fetches it once per process (with a 3 s timeout)
  when building its first user agent, unless `HF_HUB_DISABLE_TELEMETRY=1`; it gets an
  empty registry.

hf_xet is never involved: the client only uses it when a response carries `X-Xet-Hash`, which
this server never sends. `HF_HUB_DISABLE_XET=1` is not needed, but `client_env()` sets it so a
stray xet header could never send a child process to a CAS server.

Client settings read at import time (`huggingface_hub.constants`): `HF_ENDPOINT`,
`HF_HUB_DISABLE_TELEMETRY`, `HF_HUB_DISABLE_XET`, `HF_HUB_ETAG_TIMEOUT`, `HF_HOME`. Child
processes get them from `client_env()`; in-process tests pass `endpoint=` to the functions
that take it (`HfApi`, `hf_hub_download`, `snapshot_download`), or monkeypatch
`constants.ENDPOINT` and `constants.HUGGINGFACE_CO_URL_TEMPLATE` together.

Offline mode (`set_offline(True)`) refuses connections the way an unreachable host does: the
listening socket is closed and the port stays bound without listening, so connects get a RST
(`httpx2.ConnectError`, in well under a millisecond), and open keep-alive connections are shut
so pooled ones cannot slip through. The client treats `ConnectError` as "no connection":
`model_info` raises it at once, `snapshot_download` falls back to the cache or raises
`LocalEntryNotFoundError` at once, but an uncached `hf_hub_download` retries the HEAD with
backoff (1+2+4+8+8 s) before raising `LocalEntryNotFoundError`. A 503 would be no faster (the
client retries 5xx the same way) and a dropped connection surfaces as a raw
`RemoteProtocolError` that the client does not treat as offline. A transfer cut by going
offline retries the connect 5 times, 1 s apart, then raises a raw `httpx2.ConnectError`.

Resume, as the 2.4 client does it (what `cut_after` exercises): `http_get` reads the body in
10 MiB chunks (`constants.DOWNLOAD_CHUNK_SIZE`) and writes whole chunks only, so after a
dropped connection it sleeps 1 s and asks `Range: bytes=<multiple of 10 MiB>-`; a cut within
the first 10 MiB restarts from byte 0 without a Range. Each call downloads into its own
`<etag>.<random>.incomplete` file and deletes it on failure, so a later call never resumes
an earlier one's partial file. Nothing checks the sha256 after a download, only the size.

Run standalone with `python -m tests.hub.server ROOT [--port N]`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

# Files the hub stores in LFS here: weights by suffix, anything else by size.
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")
LFS_MIN_SIZE = 1 << 20
# One fixed date for every repo, so listings are deterministic.
COMMIT_DATE = "2024-01-01T00:00:00.000Z"
# The hub's page size for tree listings without `expand`.
TREE_PAGE_SIZE = 1000
_CHUNK = 64 * 1024
_MAX_SAFETENSORS_HEADER = 25_000_000
_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _git_blob_sha1(data_size: int, chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha1(f"blob {data_size}\0".encode())
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class HubFile:
    """One file of a repo, with the hashes the hub reports for it."""

    path: str
    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    @property
    def pointer(self) -> bytes:
        """The git-lfs pointer the hub's git history holds instead of an LFS file."""
        return _LFS_POINTER.format(sha256=self.sha256, size=self.size).encode()

    @property
    def blob_id(self) -> str:
        """The git blob id: of the pointer for LFS files, of the content otherwise."""
        if not self.lfs:
            return self.git_sha1
        pointer = self.pointer
        return _git_blob_sha1(len(pointer), iter((pointer,)))

    @property
    def etag(self) -> str:
        """What the client keys its blob cache on: sha256 for LFS files, git sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_sha1


@dataclass(frozen=True)
class RepoSnapshot:
    """A repo's files as they are on disk now, and the commit sha naming that state."""

    repo_id: str
    directory: Path
    commit: str
    files: Mapping[str, HubFile]

    def config(self) -> dict[str, Any] | None:
        """The repo's config.json, if it has a readable one."""
        try:
            data = json.loads((self.directory / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered, for assertions on what the client asked."""

    method: str
    route: str
    repo_id: str | None
    path: str | None
    range: str | None
    status: int


class _HubError(Exception):
    """An error answer in the hub's shape: status, `X-Error-Code` and a JSON body."""

    def __init__(
        self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class HubServer:
    """A hub serving `root/<org>/<name>` repos on 127.0.0.1, in a daemon thread.

    Thread-safe: handlers run one thread per connection, and the counters and fault
    settings may be changed from any thread while downloads run.
    """

    def __init__(
        self, root: Path | None = None, *, port: int = 0, tree_page_size: int = TREE_PAGE_SIZE
    ) -> None:
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="hub-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tree_page_size = tree_page_size
        self._requested_port = port
        self._port = 0
        self._lock = threading.Lock()
        # Serializes start/stop/offline transitions, which swap sockets and threads.
        self._state_lock = threading.Lock()
        self._httpd: _Httpd | None = None
        self._thread: threading.Thread | None = None
        self._placeholder: socket.socket | None = None
        self._offline = False
        self._connections: set[socket.socket] = set()
        self._hashes: dict[tuple[str, int, int], tuple[str, str]] = {}
        self._gates: dict[str, str] = {}
        self._cuts: dict[tuple[str, str], collections.deque[int]] = {}
        self._throttle: int | None = None
        self._served: collections.Counter[tuple[str, str]] = collections.Counter()
        self._requests: list[RequestRecord] = []

    # Lifecycle

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the hub server is not started")
        return self._port

    @property
    def url(self) -> str:
        """The endpoint to give the client (`HF_ENDPOINT`, `endpoint=`)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        with self._state_lock:
            if self._httpd is not None:
                return self
            self._httpd = _Httpd(("127.0.0.1", self._requested_port), self)
            self._port = self._httpd.server_address[1]
            self._serve()
        return self

    def stop(self) -> None:
        """Stop serving, close every socket, and remove the root if this server made it."""
        with self._state_lock:
            httpd = self._httpd
            if httpd is None:
                return
            if self._placeholder is not None:
                self._placeholder.close()
                self._placeholder = None
            else:
                httpd.shutdown()
                httpd.socket.close()
            self._close_connections()
            if self._thread is not None:
                self._thread.join()
            self._httpd = None
            self._thread = None
            self._offline = False
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def client_env(self) -> dict[str, str]:
        """Environment for a child process whose `huggingface_hub` must use this server.

        Telemetry off keeps the client from fetching the agent registry (and writing it
        under `HF_HOME`); xet off is belt and braces (see the module docstring).
        """
        return {
            "HF_ENDPOINT": self.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }

    def _serve(self) -> None:
        httpd = self._httpd
        assert httpd is not None
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    # Repos

    def add_repo(self, repo_id: str, src_dir: Path, *, copy: bool = False) -> Path:
        """Serve `src_dir` as `repo_id`: symlinked (the default, instant) or copied."""
        dest = self.repo_dir(repo_id)
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(f"{repo_id} is already served from {dest}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copytree(src_dir, dest)
        else:
            dest.symlink_to(Path(src_dir).resolve(), target_is_directory=True)
        return dest

    def repo_dir(self, repo_id: str) -> Path:
        org, name = _split_repo_id(repo_id)
        return self.root / org / name

    def snapshot(self, repo_id: str) -> RepoSnapshot:
        """The repo's current files and commit; raises `KeyError` for an unknown repo."""
        directory = self.repo_dir(repo_id)
        if not directory.is_dir():
            raise KeyError(repo_id)
        files: dict[str, HubFile] = {}
        for path in _walk(directory):
            relative = path.relative_to(directory).as_posix()
            files[relative] = self._hub_file(path, relative)
        commit = hashlib.sha1()
        for relative in sorted(files):
            commit.update(f"{relative}\0{files[relative].etag}\n".encode())
        ordered = {relative: files[relative] for relative in sorted(files)}
        return RepoSnapshot(repo_id, directory, commit.hexdigest(), ordered)

    def commit(self, repo_id: str) -> str:
        """The commit sha `main` resolves to now."""
        return self.snapshot(repo_id).commit

    def _hub_file(self, path: Path, relative: str) -> HubFile:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            hashes = self._hashes.get(key)
        if hashes is None:
            sha256 = hashlib.sha256()
            with path.open("rb") as handle:
                git_sha1 = _git_blob_sha1(stat.st_size, _tee(handle, sha256))
            hashes = (sha256.hexdigest(), git_sha1)
            with self._lock:
                self._hashes[key] = hashes
        lfs = relative.endswith(LFS_SUFFIXES) or stat.st_size > LFS_MIN_SIZE
        return HubFile(relative, stat.st_size, hashes[0], hashes[1], lfs)

    # Access control and faults

    def gate(self, repo_id: str, token: str) -> None:
        """Make `repo_id` gated: its files need `Authorization: Bearer <token>`."""
        with self._lock:
            self._gates[repo_id] = token

    def ungate(self, repo_id: str) -> None:
        with self._lock:
            self._gates.pop(repo_id, None)

    def cut_after(self, repo_id: str, path: str, nbytes: int) -> None:
        """The next GET of this file sends `nbytes` of body, then drops the connection.

        Calls queue up: two calls cut the next two GETs. The client sees a
        `RemoteProtocolError` mid-body, which `http_get` retries with a Range request.
        """
        with self._lock:
            self._cuts.setdefault((repo_id, path), collections.deque()).append(nbytes)

    def set_offline(self, offline: bool) -> None:
        """Refuse (True) or accept (False) connections; see the module docstring."""
        with self._state_lock:
            httpd = self._httpd
            if httpd is None:
                raise RuntimeError("the hub server is not started")
            if offline == self._offline:
                return
            if offline:
                self._offline = True
                httpd.shutdown()
                httpd.socket.close()
                # Holding the port bound without listening makes the kernel answer
                # connects with a RST, and keeps anyone else from taking the port.
                placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                placeholder.bind(("127.0.0.1", self._port))
                self._placeholder = placeholder
                self._close_connections()
                if self._thread is not None:
                    self._thread.join()
            else:
                placeholder = self._placeholder
                assert placeholder is not None
                placeholder.listen(httpd.request_queue_size)
                httpd.socket = placeholder
                self._placeholder = None
                self._offline = False
                self._serve()

    @property
    def offline(self) -> bool:
        return self._offline

    def set_throttle(self, bytes_per_second: int | None) -> None:
        """Pace every file body at this rate per connection (None: full speed)."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        with self._lock:
            self._throttle = bytes_per_second

    # Counters

    def bytes_served(self, repo_id: str | None = None) -> int:
        """Bytes of file content sent, for one repo or all."""
        with self._lock:
            return sum(n for (repo, _), n in self._served.items() if repo_id in (None, repo))

    def served_files(self) -> dict[tuple[str, str], int]:
        """Bytes of content sent per (repo, path), for files with at least one byte sent."""
        with self._lock:
            return {key: n for key, n in self._served.items() if n}

    def request_counts(self) -> dict[str, int]:
        """Requests answered per "METHOD route" (routes: model_info, tree, resolve,
        agent_harnesses, unknown)."""
        with self._lock:
            return dict(collections.Counter(f"{r.method} {r.route}" for r in self._requests))

    def requests(self) -> list[RequestRecord]:
        """Every request answered since the last reset, in order."""
        with self._lock:
            return list(self._requests)

    def reset_counters(self) -> None:
        with self._lock:
            self._served.clear()
            self._requests.clear()

    # Internals used by the handler

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def _count(self, repo_id: str, path: str, nbytes: int) -> None:
        with self._lock:
            self._served[(repo_id, path)] += nbytes

    def _take_cut(self, repo_id: str, path: str) -> int | None:
        with self._lock:
            queue = self._cuts.get((repo_id, path))
            if not queue:
                return None
            nbytes = queue.popleft()
            if not queue:
                del self._cuts[(repo_id, path)]
            return nbytes

    def _gate_token(self, repo_id: str) -> str | None:
        with self._lock:
            return self._gates.get(repo_id)

    def _throttle_rate(self) -> int | None:
        with self._lock:
            return self._throttle

    def _track(self, connection: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


def _split_repo_id(repo_id: str) -> tuple[str, str]:
    org, slash, name = repo_id.partition("/")
    if not slash or not _REPO_PART.match(org) or not _REPO_PART.match(name) or ".." in repo_id:
        raise ValueError(f"not a repo id of the form org/name: {repo_id!r}")
    return org, name


def _walk(directory: Path) -> Iterator[Path]:
    """Every file under `directory`, following symlinks, skipping a `.git` folder."""
    for current, dirs, names in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(names):
            path = Path(current) / name
            if path.is_file():
                yield path


def _tee(handle: Any, digest: Any) -> Iterator[bytes]:
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
        yield chunk


def _safetensors_parameters(snapshot: RepoSnapshot) -> dict[str, Any] | None:
    """Parameter counts per dtype from the safetensors headers, as the hub reports them;
    files that are not valid safetensors are left out."""
    counts: collections.Counter[str] = collections.Counter()
    for file in snapshot.files.values():
        if not file.path.endswith(".safetensors") or file.size < 8:
            continue
        try:
            with (snapshot.directory / file.path).open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > min(file.size - 8, _MAX_SAFETENSORS_HEADER):
                    continue
                header = json.loads(handle.read(length))
            file_counts: collections.Counter[str] = collections.Counter()
            for name, entry in header.items():
                if name != "__metadata__":
                    file_counts[entry["dtype"]] += math.prod(entry["shape"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
            continue
        counts.update(file_counts)
    if not counts:
        return None
    return {"parameters": dict(counts), "total": sum(counts.values())}


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: HubServer) -> None:
        self.hub = hub
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (getfqdn), which can stall
        # without a network; the name is never used.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (and offline mode shutting connections) are expected.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def hub(self) -> HubServer:
        return cast(_Httpd, self.server).hub

    def setup(self) -> None:
        super().setup()
        self.hub._track(self.connection, opened=True)

    def finish(self) -> None:
        self.hub._track(self.connection, opened=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._dispatch(head=False)

    # Routing

    def _dispatch(self, head: bool) -> None:
        if self.hub.offline:
            # A connection that raced the switch: hang up as an unreachable host would.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        split = urlsplit(self.path)
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        # What the request is about, recorded when its status line goes out (so a client
        # that has its answer always finds the record).
        self._target: tuple[str, str | None, str | None] = ("unknown", None, None)
        self._recorded = False
        try:
            if self.command == "POST":
                raise _HubError(405, None, f"{self.command} {split.path} is not served here")
            if segments == ["api", "agent-harnesses"]:
                self._target = ("agent_harnesses", None, None)
                self._send_json({"standardEnvVars": [], "harnesses": {}}, head)
            elif len(segments) >= 4 and segments[:2] == ["api", "models"]:
                repo_id = f"{segments[2]}/{segments[3]}"
                rest = segments[4:]
                if not rest or (rest[0] == "revision" and len(rest) == 2):
                    self._target = ("model_info", repo_id, None)
                    self._model_info(repo_id, rest[1] if rest else "main", query, head)
                elif rest[0] == "tree" and len(rest) >= 2:
                    path = "/".join(rest[2:]).strip("/")
                    self._target = ("tree", repo_id, path)
                    self._tree(repo_id, rest[1], path, query, head)
                else:
                    raise _HubError(404, None, f"no route for {split.path}")
            elif len(segments) >= 5 and segments[2] == "resolve":
                repo_id, path = f"{segments[0]}/{segments[1]}", "/".join(segments[4:])
                self._target = ("resolve", repo_id, path)
                self._resolve(repo_id, segments[3], path, head)
            else:
                raise _HubError(404, None, f"no route for {split.path}")
        except _HubError as error:
            self._send_error(error, head)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            if not self._recorded:
                self._record(499)
        except Exception as error:
            # A bug here: answer 500 with the reason rather than leave the client hanging.
            traceback.print_exc()
            if not self._recorded:
                self._send_error(_HubError(500, None, f"{type(error).__name__}: {error}"), head)
            else:
                self.close_connection = True

    def _record(self, status: int) -> None:
        self._recorded = True
        route, repo_id, path = self._target
        self.hub._record(
            RequestRecord(self.command, route, repo_id, path, self.headers.get("Range"), status)
        )

    def _snapshot(self, repo_id: str) -> RepoSnapshot:
        try:
            return self.hub.snapshot(repo_id)
        except (KeyError, ValueError):
            raise _HubError(404, "RepoNotFound", f"Repository {repo_id} not found") from None

    @staticmethod
    def _check_revision(snapshot: RepoSnapshot, revision: str) -> None:
        if revision not in ("main", snapshot.commit):
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    # Routes

    def _model_info(
        self, repo_id: str, revision: str, query: Mapping[str, str], head: bool
    ) -> None:
        snapshot = self._snapshot(repo_id)
        self._check_revision(snapshot, revision)
        blobs = query.get("blobs", "").lower() in ("1", "true")
        siblings: list[dict[str, Any]] = []
        for file in snapshot.files.values():
            sibling: dict[str, Any] = {"rfilename": file.path}
            if blobs:
                sibling["blobId"] = file.blob_id
                sibling["size"] = file.size
                if file.lfs:
                    sibling["lfs"] = {
                        "sha256": file.sha256,
                        "size": file.size,
                        "pointerSize": len(file.pointer),
                    }
            siblings.append(sibling)
        config = snapshot.config()
        model_type = config.get("model_type") if config else None
        gated = self.hub._gate_token(repo_id) is not None
        info: dict[str, Any] = {
            "_id": snapshot.commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": snapshot.commit,
            "lastModified": COMMIT_DATE,
            "createdAt": COMMIT_DATE,
            "private": False,
            "gated": "manual" if gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": "mlx",
            "pipeline_tag": "text-generation",
            "tags": [t for t in ("mlx", "safetensors", model_type) if isinstance(t, str)],
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(f.size for f in snapshot.files.values()),
        }
        if config is not None:
            info["config"] = {
                key: config[key] for key in ("architectures", "model_type") if key in config
            }
        if (safetensors := _safetensors_parameters(snapshot)) is not None:
            info["safetensors"] = safetensors
        if wanted := parse_qs(urlsplit(self.path).query).get("expand"):
            info = {k: v for k, v in info.items() if k in {"_id", "id", *wanted}}
        self._send_json(info, head)

    def _tree(
        self, repo_id: str, revision: str, path: str, query: Mapping[str, str], head: bool
    ) -> None:
        snapshot = self._snapshot(repo_id)
        self._check_revision(snapshot, revision)
        recursive = query.get("recursive", "").lower() in ("1", "true")
        expand = query.get("expand", "").lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        directories: set[str] = set()
        entries: list[dict[str, Any]] = []
        for file in snapshot.files.values():
            if not file.path.startswith(prefix):
                continue
            parts = file.path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if depth == 1 or recursive:
                    directories.add(prefix + "/".join(parts[:depth]))
            if len(parts) == 1 or recursive:
                entry: dict[str, Any] = {
                    "type": "file",
                    "oid": file.blob_id,
                    "size": file.size,
                    "path": file.path,
                }
                if file.lfs:
                    entry["lfs"] = {
                        "oid": file.sha256,
                        "size": file.size,
                        "pointerSize": len(file.pointer),
                    }
                entries.append(entry)
        if path and not entries and not directories:
            raise _HubError(
                404,
                "EntryNotFound",
                f"{path} does not exist on {revision}",
                {"X-Repo-Commit": snapshot.commit},
            )
        for directory in directories:
            oid = hashlib.sha1(f"tree {snapshot.commit} {directory}".encode()).hexdigest()
            entries.append({"type": "directory", "oid": oid, "size": 0, "path": directory})
        entries.sort(key=lambda e: e["path"])
        if expand:
            for entry in entries:
                entry["lastCommit"] = {
                    "id": snapshot.commit,
                    "title": "Upload model",
                    "date": COMMIT_DATE,
                }
        page_size = self.hub.tree_page_size
        cursor = int(query.get("cursor", "0") or 0)
        page = entries[cursor : cursor + page_size]
        headers: dict[str, str] = {}
        if cursor + page_size < len(entries):
            split = urlsplit(self.path)
            params = {k: v for k, v in query.items() if k != "cursor"}
            params["cursor"] = str(cursor + page_size)
            encoded = "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
            host = self.headers.get("Host") or f"127.0.0.1:{self.hub.port}"
            headers["Link"] = f'<http://{host}{split.path}?{encoded}>; rel="next"'
        self._send_json(page, head, headers)

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        snapshot = self._snapshot(repo_id)
        token = self.hub._gate_token(repo_id)
        if token is not None:
            auth = self.headers.get("Authorization") or ""
            if not auth.lower().startswith("bearer "):
                raise _HubError(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                )
            if auth[len("bearer ") :].strip() != token:
                raise _HubError(
                    403,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted and you are not in the "
                    "authorized list.",
                )
        self._check_revision(snapshot, revision)
        file = snapshot.files.get(path)
        if file is None:
            raise _HubError(
                404,
                "EntryNotFound",
                f"{path} does not exist on {revision}",
                {"X-Repo-Commit": snapshot.commit},
            )
        start, end = 0, file.size - 1
        status = 200
        headers = {
            "ETag": f'"{file.etag}"',
            "X-Repo-Commit": snapshot.commit,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": (
                f"inline; filename*=UTF-8''{quote(Path(path).name)}; "
                f'filename="{Path(path).name}";'
            ),
        }
        if file.lfs:
            headers["X-Linked-Etag"] = f'"{file.sha256}"'
            headers["X-Linked-Size"] = str(file.size)
        byte_range = _parse_range(self.headers.get("Range"), file.size)
        if byte_range is not None:
            start, end = byte_range
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{file.size}"
        headers["Content-Length"] = str(max(end - start + 1, 0))
        self._send_head(status, headers)
        if not head:
            self._send_body(snapshot, file, start, end)

    # Writing

    def _send_head(self, status: int, headers: Mapping[str, str]) -> None:
        self._record(status)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(self, data: Any, head: bool, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send_head(
            200,
            {
                "Content-Type": "application/json; charset=utf-8",
                "Content-Length": str(len(body)),
                **(headers or {}),
            },
        )
        if not head:
            self.wfile.write(body)

    def _send_error(self, error: _HubError, head: bool) -> None:
        body = json.dumps({"error": error.message}).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(body)),
            "X-Error-Message": error.message,
            **error.headers,
        }
        if error.code is not None:
            headers["X-Error-Code"] = error.code
        self._send_head(error.status, headers)
        if not head:
            self.wfile.write(body)

    def _send_body(self, snapshot: RepoSnapshot, file: HubFile, start: int, end: int) -> None:
        hub = self.hub
        cut = hub._take_cut(snapshot.repo_id, file.path)
        remaining = end - start + 1
        sent = 0
        began = time.monotonic()
        with (snapshot.directory / file.path).open("rb") as handle:
            handle.seek(start)
            while remaining > 0:
                rate = hub._throttle_rate()
                size = min(_CHUNK, remaining, max(rate // 20, 1024) if rate else _CHUNK)
                if cut is not None:
                    size = min(size, cut - sent)
                    if size <= 0:
                        self._drop()
                        return
                data = handle.read(size)
                if not data:
                    break
                # Counted before the write, so a client holding the last byte always
                # finds it counted; taken back if the write fails.
                hub._count(snapshot.repo_id, file.path, len(data))
                try:
                    self.wfile.write(data)
                except OSError:
                    hub._count(snapshot.repo_id, file.path, -len(data))
                    raise
                sent += len(data)
                remaining -= len(data)
                if rate:
                    ahead = began + sent / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        if cut is not None and cut <= sent:
            self._drop()

    def _drop(self) -> None:
        """Hang up mid-body, as a broken link would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end), inclusive, for a single `bytes=` range; None to ignore the header
    (absent, malformed or multi-range: the whole file is sent, as HTTP allows)."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or not (match[1] or match[2]):
        return None
    if match[1]:
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
    else:
        start, end = max(size - int(match[2]), 0), size - 1
    if start >= size or end < start:
        raise _HubError(
            416, None, "Requested range not satisfiable", {"Content-Range": f"bytes */{size}"}
        )
    return start, end


def main() -> None:
    """Serve a directory of repos until interrupted (for manual runs against exo)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", type=Path, help="directory holding <org>/<name>/ repos")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with HubServer(args.root, port=args.port) as server:
        print(f"HF_ENDPOINT={server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
