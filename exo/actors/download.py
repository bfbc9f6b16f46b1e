"""The download actor: a reconciler that makes sure every model placed on this node has
the files of its shard here, and reports progress and failure as commands.

Sources: the bundled model (converted from its package's GGUF), hub repos (only the
files holding this node's layers, through `huggingface_hub` and its cache), and local
model directories (nothing to fetch). Progress reaches the log at most once a second.
A failure the hub may recover from (unreachable, 5xx) is reported as failed, so waiting
requests end at once with its reason, and retried with a backoff; other failures
(unknown repo, gated, too little disk, corrupt twice) wait for a node restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol

import trio

from exo.actors.command_client import CommandClient
from exo.actors.file_share import FileShare, PeerCopyFailed, plan_sources
from exo.actors.replica import Replica
from exo.actors.runtime import leaves
from exo.environment import Environment
from exo.events.commands import ReportDownload
from exo.events.facts import DownloadStatus, ModelCard
from exo.events.ids import ModelId, NodeId
from exo.events.state import State
from exo.models.bundled import BundledModelMissing, bundled_gguf, ensure_bundled_model
from exo.models.cards import card_for
from exo.models.gguf import is_converted
from exo.models.hub import bytes_of, files_needed, wants_model
from exo.models.hub_client import DOWNLOAD_WORKERS, HubClient
from exo.models.hub_errors import CorruptDownload, HubUnreachable
from exo.models.hub_files import ByteTally

log = logging.getLogger("exo.download")

PROGRESS_INTERVAL = 1.0
RETRY_FIRST = 2.0
RETRY_MAX = 60.0


def models_needed(state: State, node_id: NodeId) -> list[ModelId]:
    """Models this node should hold (`wants_model`: placed here or ordered fetched, and
    not ordered stopped), in a stable order."""
    candidates = {i.model for i in state.instances.values()}
    candidates.update(state.download_orders.get(node_id, {}))
    return sorted(m for m in candidates if wants_model(state, node_id, m))


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class ModelStore(Protocol):
    """Where cards and weights come from; every method blocks (run it through
    `Environment.run_blocking`)."""

    def describe(self, name: str) -> ModelCard:
        """The card of a hub repo id; `HubError`s or `NotAModel` say why not."""
        ...

    def describe_directory(self, path: Path, name: str) -> ModelCard:
        """The card of a local model directory served as `name`; `NotAModel` if it is none."""
        ...

    def model_dir(self, card: ModelCard) -> Path: ...

    def missing(self, card: ModelCard, files: tuple[str, ...]) -> list[str]: ...

    def fetch(
        self, card: ModelCard, files: tuple[str, ...], on_bytes: Callable[[int], None]
    ) -> None: ...

    def size(self, card: ModelCard, files: tuple[str, ...]) -> int:
        """Bytes of the files once complete (the total a download reports)."""
        ...

    def partial_path(self, card: ModelCard, name: str) -> Path | None:
        """Where a copy of the file from a peer goes; None: only the hub can give it."""
        ...

    def complete_partial(self, card: ModelCard, name: str) -> None:
        """Verify the copied file and make it part of the model's directory."""
        ...


class NodeModelStore:
    """The bundled model under `models_dir`; hub and local models through `HubClient`."""

    def __init__(self, models_dir: Path, hub: HubClient | None = None) -> None:
        self.models_dir = models_dir
        self._hub = hub
        self._hub_lock = threading.Lock()

    @property
    def hub(self) -> HubClient:
        with self._hub_lock:  # built lazily: importing huggingface_hub costs ~0.3 s
            if self._hub is None:
                self._hub = HubClient()
            return self._hub

    def describe(self, name: str) -> ModelCard:
        return self.hub.describe(name)

    def describe_directory(self, path: Path, name: str) -> ModelCard:
        return self.hub.describe_directory(path, name)

    def model_dir(self, card: ModelCard) -> Path:
        if card.source == "bundled":
            return self.models_dir / card.model_id
        return self.hub.snapshot_dir(card)

    def missing(self, card: ModelCard, files: tuple[str, ...]) -> list[str]:
        if card.source != "bundled":
            return self.hub.missing(card, files)
        try:
            done = is_converted(bundled_gguf(card), self.model_dir(card))
        except BundledModelMissing:
            done = False
        return [] if done else ["model.safetensors"]

    def fetch(
        self, card: ModelCard, files: tuple[str, ...], on_bytes: Callable[[int], None]
    ) -> None:
        if card.source == "bundled":
            ensure_bundled_model(self.models_dir)
            return
        self.hub.download(card, files, on_bytes)

    def partial_path(self, card: ModelCard, name: str) -> Path | None:
        return None if card.source == "bundled" else self.hub.partial_path(card, name)

    def complete_partial(self, card: ModelCard, name: str) -> None:
        self.hub.complete_partial(card, name)

    def size(self, card: ModelCard, files: tuple[str, ...]) -> int:
        if card.source == "bundled":
            target = self.model_dir(card)
            return directory_bytes(target) if target.exists() else card.weight_bytes
        return bytes_of(card, list(files))


class Fetch:
    """One model's download under way: what it fetches, its bytes so far, and how to stop
    it. Stopping cancels its Trio side and makes the worker threads' next chunk raise
    `DownloadStopped` (a thread cannot be cancelled from outside)."""

    def __init__(self, card: ModelCard, files: tuple[str, ...], missing: list[str]) -> None:
        self.card = card
        self.files = files
        self.missing = missing
        self.total = 0
        self.progress = ByteTally()
        self.scope = trio.CancelScope()

    @property
    def stopped(self) -> bool:
        return self.progress.stopped

    def stop(self) -> None:
        self.progress.stop()
        self.scope.cancel()


class Downloader:
    def __init__(
        self,
        node_id: NodeId,
        env: Environment,
        replica: Replica,
        commands: CommandClient,
        models_dir: Path,
        store: ModelStore | None = None,
        files: FileShare | None = None,
    ) -> None:
        self._node_id = node_id
        self._env = env
        self._replica = replica
        self._commands = commands
        self.models_dir = models_dir
        self._store: ModelStore = store or NodeModelStore(models_dir)
        # Copies of weight files from peers (None: the hub only, as in the simulator).
        self._files = files
        self._copy_slots = trio.CapacityLimiter(DOWNLOAD_WORKERS)
        self._failed_here: set[ModelId] = set()
        # Transient failures: when to try the model again, and the delay after that.
        self._retry_at: dict[ModelId, tuple[float, float]] = {}
        # Downloads under way, and the serial of the last fetch order each one obeyed.
        self._fetching: dict[ModelId, Fetch] = {}
        self._orders_obeyed: dict[ModelId, int] = {}

    def model_dir(self, model: ModelId) -> Path:
        card = card_for(model, self._replica.state.models)
        if card is None:
            return self.models_dir / model
        return self._store.model_dir(card)

    async def run(self) -> None:
        # Most state changes (request lifecycle) touch neither the models this node should
        # hold nor their download status; only a change in those is worth a look at the disk.
        seen: object = None
        async with trio.open_nursery() as nursery:
            while True:
                state = self._replica.state
                needed = models_needed(state, self._node_id)
                for model, fetch in self._fetching.items():
                    if model not in needed:
                        fetch.stop()
                view = [
                    (
                        m,
                        state.download_status(self._node_id, m),
                        state.download_order(self._node_id, m),
                    )
                    for m in needed
                ]
                retries = [at for m, (at, _) in self._retry_at.items() if m in needed]
                if view != seen or any(at <= self._env.now() for at in retries):
                    for model in needed:
                        await self._reconcile(state, model, nursery)
                    seen = view
                    retries = [at for m, (at, _) in self._retry_at.items() if m in needed]
                with trio.move_on_at(min(retries) if retries else float("inf")):
                    await self._replica.wait_changed()

    async def _reconcile(self, state: State, model: ModelId, nursery: trio.Nursery) -> None:
        if model in self._fetching:
            return  # under way; it reports when it ends
        reported = state.download_status(self._node_id, model)
        card = card_for(model, state.models)
        if card is None:
            await self._report(model, DownloadStatus("failed", detail=f"no model card for {model}"))
            return
        order = state.download_order(self._node_id, model)
        if order is not None and order.serial > self._orders_obeyed.get(model, 0):
            # A user's new order to fetch: a download that failed for good is tried again.
            self._orders_obeyed[model] = order.serial
            self._failed_here.discard(model)
            self._retry_at.pop(model, None)
        files = files_needed(state, self._node_id, card)
        missing = await self._env.run_blocking(lambda: self._store.missing(card, files))
        if not missing:
            self._retry_at.pop(model, None)
            if reported is None or reported.phase != "complete":
                size = await self._env.run_blocking(lambda: self._store.size(card, files))
                await self._report(model, DownloadStatus("complete", size, size))
            return
        if model in self._failed_here:
            return  # tried and failed for good: a node restart or a new order retries
        retry = self._retry_at.get(model)
        if retry is not None and retry[0] > self._env.now():
            return
        fetch = Fetch(card, files, missing)
        self._fetching[model] = fetch
        nursery.start_soon(self._run_fetch, fetch)

    async def _run_fetch(self, fetch: Fetch) -> None:
        """One model's download, to its end: complete, failed, or stopped (`Fetch.stop`:
        its bytes so far stay on disk, and the next start continues from them)."""
        card, model = fetch.card, fetch.card.model_id
        failure: Exception | None = None
        try:
            with fetch.scope:
                try:
                    await self._fetch(fetch)
                except Exception as exc:
                    failure = exc
            if fetch.stopped:
                log.info("download of %s stopped at %d bytes", model, fetch.progress.done)
                status = DownloadStatus(
                    "stopped", fetch.progress.done, fetch.total, detail=self._why_stopped(model)
                )
                await self._report(model, status)
            elif failure is not None:
                await self._failed(model, first_cause(failure))
            else:
                self._retry_at.pop(model, None)
                size = await self._env.run_blocking(lambda: self._store.size(card, fetch.files))
                log.info(
                    "model %s ready at %s (%d bytes)", model, self._store.model_dir(card), size
                )
                await self._report(model, DownloadStatus("complete", size, size))
        finally:
            del self._fetching[model]

    def _why_stopped(self, model: ModelId) -> str:
        order = self._replica.state.download_order(self._node_id, model)
        if order is not None and order.action == "stop":
            return "stopped by request; start it again to continue"
        return "no longer placed on this node"

    async def _fetch(self, fetch: Fetch) -> None:
        card, files, missing = fetch.card, fetch.files, fetch.missing
        total = await self._env.run_blocking(lambda: self._store.size(card, files))
        already = total - await self._env.run_blocking(
            lambda: self._store.size(card, tuple(missing))
        )
        fetch.total = total
        progress = fetch.progress
        progress.add(already)
        log.info("fetching %d files of %s (%d bytes)", len(missing), card.model_id, total)
        await self._report(card.model_id, DownloadStatus("downloading", already, total))

        async def report_progress() -> None:
            last = (already, self._env.now())
            while True:
                await self._env.sleep(PROGRESS_INTERVAL)
                done, now = progress.done, self._env.now()
                if done != last[0]:
                    rate = int((done - last[0]) / max(now - last[1], 1e-3))
                    status = DownloadStatus("downloading", min(done, total), total, rate=rate)
                    await self._report(card.model_id, status)
                    last = (done, now)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(report_progress)
            await self._fetch_files(card, set(missing), progress)
            nursery.cancel_scope.cancel()

    async def _fetch_files(self, card: ModelCard, pending: set[str], progress: ByteTally) -> None:
        """Each file from a peer that holds it, or after the peer fetching it from the hub
        is done, or from the hub (`file_share.plan_sources`)."""
        refused: set[tuple[NodeId, str]] = set()

        def copyable(name: str) -> bool:
            return self._files is not None and self._store.partial_path(card, name) is not None

        while pending:
            state = self._replica.state
            plan = plan_sources(state, self._node_id, card, pending, copyable, frozenset(refused))
            from_hub: list[str] = []
            from_peers: dict[str, tuple[NodeId, ...]] = {}
            waiting: set[NodeId] = set()
            for name, source in sorted(plan.items()):
                match source:
                    case ("hub", None):
                        from_hub.append(name)
                    case ("peer", peers):
                        from_peers[name] = peers
                    case ("wait", fetcher):
                        waiting.add(fetcher)
            if not from_hub and not from_peers:
                log.info(
                    "waiting for %s to fetch files of %s", ", ".join(sorted(waiting)), card.model_id
                )
                with trio.move_on_after(RETRY_MAX):
                    await self._replica.wait_changed()
                continue
            done: set[str] = set()
            async with trio.open_nursery() as nursery:
                if from_hub:
                    nursery.start_soon(self._from_hub, card, tuple(from_hub), progress, done)
                for name, peers in sorted(from_peers.items()):
                    nursery.start_soon(self._copy, card, name, peers, progress, done, refused)
            pending -= done

    async def _from_hub(
        self, card: ModelCard, names: tuple[str, ...], progress: ByteTally, done: set[str]
    ) -> None:
        fetch = partial(self._store.fetch, card, names, progress.add)
        await self._env.run_blocking(fetch, abandon_on_cancel=True)
        done.update(names)

    async def _copy(
        self,
        card: ModelCard,
        name: str,
        peers: tuple[NodeId, ...],
        progress: ByteTally,
        done: set[str],
        refused: set[tuple[NodeId, str]],
    ) -> None:
        assert self._files is not None
        target = self._store.partial_path(card, name)
        assert target is not None
        async with self._copy_slots:
            for peer in peers:
                try:
                    await self._files.copy(peer, card, name, target, progress.add)
                    await self._env.run_blocking(lambda: self._store.complete_partial(card, name))
                except (PeerCopyFailed, CorruptDownload) as exc:
                    log.warning("copying %s from node %s failed: %s", name, peer, exc)
                    refused.add((peer, name))
                    continue
                log.info("copied %s of %s from node %s", name, card.model_id, peer)
                done.add(name)
                return

    async def _failed(self, model: ModelId, exc: Exception) -> None:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, HubUnreachable):
            _, delay = self._retry_at.get(model, (0.0, RETRY_FIRST / 2))
            delay = min(delay * 2, RETRY_MAX)
            self._retry_at[model] = (self._env.now() + delay, delay)
            detail = f"{detail}; retrying in {delay:g} s"
            log.warning("download of %s failed: %s", model, detail)
        else:
            log.error("download of %s failed: %s", model, detail, exc_info=exc)
            self._failed_here.add(model)
        await self._report(model, DownloadStatus("failed", detail=detail))

    async def _report(self, model: ModelId, status: DownloadStatus) -> None:
        await self._commands.send(ReportDownload(model, status))


def first_cause(error: Exception) -> Exception:
    """The failure inside the nurseries a download runs in: a transient one (the hub
    unreachable) if any of them is, so the download is retried."""
    inner = [e for e in leaves(error) if isinstance(e, Exception)]
    transient = [e for e in inner if isinstance(e, HubUnreachable)]
    return (transient or inner or [error])[0]
