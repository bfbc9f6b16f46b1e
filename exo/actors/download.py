"""The download actor: a reconciler that makes sure every model placed on this node has
its weights on local disk, and reports progress and failure as commands.

Today the only source is the bundled model (converted from its package's GGUF); hub
downloads plug in here through the model card's `source`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from exo.actors.command_client import CommandClient
from exo.actors.environment import Environment
from exo.actors.replica import Replica
from exo.events.commands import ReportDownload
from exo.events.facts import DownloadStatus
from exo.events.ids import ModelId, NodeId
from exo.events.state import State
from exo.models.bundled import BundledModelMissing, bundled_gguf, ensure_bundled_model
from exo.models.cards import ModelCard, card_for
from exo.models.gguf import is_converted

log = logging.getLogger("exo.download")


def models_needed(state: State, node_id: NodeId) -> list[ModelId]:
    """Models with a shard placed on this node, in a stable order."""
    return sorted({i.model for i in state.instances.values() if i.shard_on(node_id) is not None})


def is_on_disk(card: ModelCard, target: Path) -> bool:
    """Whether the model's weights are complete in `target` (a finished conversion)."""
    if card.source != "bundled":
        return False
    try:
        return is_converted(bundled_gguf(card), target)
    except BundledModelMissing:
        return False


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class ModelStore(Protocol):
    """Where weights come from; blocking methods run through `Environment.run_blocking`."""

    def is_on_disk(self, card: ModelCard, target: Path) -> bool: ...

    def fetch(self, card: ModelCard, models_dir: Path) -> None: ...

    def size(self, target: Path) -> int: ...


class BundledStore:
    """Today's only source: the bundled model, converted from its package's GGUF."""

    def is_on_disk(self, card: ModelCard, target: Path) -> bool:
        return is_on_disk(card, target)

    def fetch(self, card: ModelCard, models_dir: Path) -> None:
        if card.source != "bundled":
            raise RuntimeError(f"{card.model_id}: hub downloads are not available yet")
        ensure_bundled_model(models_dir)

    def size(self, target: Path) -> int:
        return directory_bytes(target)


class Downloader:
    def __init__(
        self,
        node_id: NodeId,
        env: Environment,
        replica: Replica,
        commands: CommandClient,
        models_dir: Path,
        store: ModelStore | None = None,
    ) -> None:
        self._node_id = node_id
        self._env = env
        self._replica = replica
        self._commands = commands
        self.models_dir = models_dir
        self._store: ModelStore = store or BundledStore()
        self._failed_here: set[ModelId] = set()

    def model_dir(self, model: ModelId) -> Path:
        return self.models_dir / model

    async def run(self) -> None:
        # Most state changes (request lifecycle) touch neither the models placed here nor
        # their download status; only a change in those is worth a look at the disk.
        seen: object = None
        while True:
            state = self._replica.state
            needed = models_needed(state, self._node_id)
            view = [(m, state.download_status(self._node_id, m)) for m in needed]
            if view != seen:
                for model in needed:
                    await self._reconcile(state, model)
                seen = view
            await self._replica.wait_changed()

    async def _reconcile(self, state: State, model: ModelId) -> None:
        reported = state.download_status(self._node_id, model)
        target = self.model_dir(model)
        card = card_for(model)
        if card is None:
            await self._report(model, DownloadStatus("failed", detail=f"no model card for {model}"))
            return
        if await self._env.run_blocking(lambda: self._store.is_on_disk(card, target)):
            if reported is None or reported.phase != "complete":
                size = await self._env.run_blocking(lambda: self._store.size(target))
                await self._report(model, DownloadStatus("complete", size, size))
            return
        if model in self._failed_here:
            return  # tried and failed in this process: a node restart retries
        await self._report(model, DownloadStatus("downloading", 0, card.weight_bytes))
        try:
            await self._fetch(card)
        except Exception as exc:
            log.exception("preparing %s failed", model)
            self._failed_here.add(model)
            await self._report(
                model, DownloadStatus("failed", detail=f"{type(exc).__name__}: {exc}")
            )
            return
        size = await self._env.run_blocking(lambda: self._store.size(target))
        log.info("model %s ready at %s (%d bytes)", model, target, size)
        await self._report(model, DownloadStatus("complete", size, size))

    async def _fetch(self, card: ModelCard) -> None:
        fetch: Callable[[], None] = lambda: self._store.fetch(card, self.models_dir)  # noqa: E731
        await self._env.run_blocking(fetch)

    async def _report(self, model: ModelId, status: DownloadStatus) -> None:
        await self._commands.send(ReportDownload(model, status))
