"""Weight files copied between nodes over their authenticated peer links, so a cluster
fetches each file from the hub once (exo itself downloads every file on every node).

Serving: a peer asks for a file of a model in the state; this node sends it from its
cache in base64 chunks with the link's backpressure, if it holds the file complete.
Copying: the download actor asks `copy` for a file a peer holds; the bytes go to the
same partial file a hub download would use (so a copy cut short resumes from the peer or
the hub alike), and the file is verified against the hub's sha256 before it counts.

Which peer holds what, and who fetches from the hub while the others wait, is decided
from the replicated state by `plan_sources`, a pure function.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Literal

import trio
from attrs import frozen

from exo.actors.network import DataLinks, PeerLost
from exo.actors.replica import Replica
from exo.actors.wire import FileChunk, FileEnd, FileMessage, FileRefused, FileRequest
from exo.environment import Environment
from exo.events.facts import ModelCard
from exo.events.ids import NodeId, random_token
from exo.events.state import State
from exo.models.cards import card_for
from exo.models.hub import files_needed, wants_model

log = logging.getLogger("exo.files")

# Bytes a chunk carries: base64 makes it 2.7 MB, well under the 16 MiB frame limit.
CHUNK_BYTES = 2 * 1024 * 1024
# A copy with no chunk for this long has stalled (a wedged or overloaded peer).
IDLE_TIMEOUT = 30.0
# Copies served at once: more only splits the link's bandwidth.
SERVE_AT_ONCE = 4


class PeerCopyFailed(Exception):
    """The copy did not complete; the file is fetched from elsewhere."""


Source = (
    tuple[Literal["peer"], tuple[NodeId, ...]]
    | tuple[Literal["wait"], NodeId]
    | tuple[Literal["hub"], None]
)


@frozen
class _Needs:
    node: NodeId
    phase: str | None
    files: frozenset[str]


def _needs(state: State, card: ModelCard) -> list[_Needs]:
    """Every node that wants the model (`wants_model`): its download phase and the files
    it needs."""
    nodes = sorted(n for n in state.nodes if wants_model(state, n, card.model_id))
    out = []
    for node in nodes:
        status = state.download_status(node, card.model_id)
        phase = status.phase if status is not None else None
        out.append(_Needs(node, phase, frozenset(files_needed(state, node, card))))
    return out


def plan_sources(
    state: State,
    me: NodeId,
    card: ModelCard,
    names: Iterable[str],
    copyable: Callable[[str], bool],
    refused: frozenset[tuple[NodeId, str]] = frozenset(),
) -> dict[str, Source]:
    """Where each missing file comes from: peers that hold it complete ("peer"), a node
    with a lower id that needs it too and is still downloading ("wait": it fetches from
    the hub, this node copies from it after), or the hub. Only files `copyable` (with a
    known sha256) are shared; (peer, file) pairs in `refused` are not asked again."""
    needs = [n for n in _needs(state, card) if n.node != me]
    out: dict[str, Source] = {}
    for name in sorted(names):
        if not copyable(name):
            out[name] = ("hub", None)
            continue
        holders = tuple(
            n.node
            for n in needs
            if n.phase == "complete" and name in n.files and (n.node, name) not in refused
        )
        if holders:
            out[name] = ("peer", holders)
            continue
        fetcher = next(
            (
                n.node
                for n in needs
                if n.node < me
                and name in n.files
                and n.phase in (None, "pending", "downloading")
                and (n.node, name) not in refused
            ),
            None,
        )
        out[name] = ("wait", fetcher) if fetcher is not None else ("hub", None)
    return out


class FileShare:
    def __init__(
        self,
        node_id: NodeId,
        env: Environment,
        replica: Replica,
        links: DataLinks,
        model_dir: Callable[[ModelCard], Path],
    ) -> None:
        self._node_id = node_id
        self._env = env
        self._replica = replica
        self._links = links
        self._model_dir = model_dir
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[NodeId, FileMessage]](
            math.inf
        )
        self._copies: dict[str, tuple[NodeId, trio.MemorySendChannel[FileMessage | None]]] = {}
        self._serving = trio.CapacityLimiter(SERVE_AT_ONCE)

    # -- inbound (called from the link layer) ----------------------------------------

    def deliver(self, peer: NodeId, message: FileMessage) -> None:
        self._inbox_send.send_nowait((peer, message))

    def link_lost(self, peer: NodeId) -> None:
        for transfer_id, (source, channel) in list(self._copies.items()):
            if source == peer:
                channel.send_nowait(None)
                self._copies.pop(transfer_id, None)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            async for peer, message in self._inbox:
                if isinstance(message, FileRequest):
                    nursery.start_soon(self._serve, peer, message)
                    continue
                entry = self._copies.get(message.transfer_id)
                if entry is not None and entry[0] == peer:
                    entry[1].send_nowait(message)

    # -- serving ---------------------------------------------------------------------

    async def _serve(self, peer: NodeId, asked: FileRequest) -> None:
        path = self._servable(asked)
        try:
            if isinstance(path, str):
                await self._links.send_data(peer, FileRefused(asked.transfer_id, path))
                return
            async with self._serving:
                size = await self._env.run_blocking(lambda: path.stat().st_size)
                offset = asked.offset
                while offset < size:
                    at = offset
                    data = await self._env.run_blocking(partial(_read, path, at, CHUNK_BYTES))
                    if not data:
                        break
                    chunk = FileChunk(asked.transfer_id, at, base64.b64encode(data).decode())
                    await self._links.send_data(peer, chunk)
                    offset += len(data)
                await self._links.send_data(peer, FileEnd(asked.transfer_id, size))
        except PeerLost:
            log.info("peer %s left while copying %s", peer, asked.name)
        except OSError as exc:
            log.warning("cannot serve %s of %s: %s", asked.name, asked.model, exc)
            with contextlib.suppress(PeerLost):
                await self._links.send_data(peer, FileRefused(asked.transfer_id, str(exc)))

    def _servable(self, asked: FileRequest) -> Path | str:
        """The file to send, or why not: only the named weight files of a model in the
        state, complete in this node's cache (never a path the peer chose)."""
        state = self._replica.state
        card = card_for(asked.model, state.models)
        if card is None:
            return f"no model {asked.model}"
        if asked.name not in {f.name for f in card.weight_files} | set(card.support_files):
            return f"{asked.name} is not a file of {asked.model}"
        # A file is in the model's directory only once complete and verified.
        path = self._model_dir(card) / asked.name
        if not path.is_file():
            return f"{asked.name} of {asked.model} is not complete here"
        return path

    # -- copying ---------------------------------------------------------------------

    async def copy(
        self,
        peer: NodeId,
        card: ModelCard,
        name: str,
        into: Path,
        on_bytes: Callable[[int], None],
    ) -> None:
        """Copy `name` from `peer` into the partial file `into`, continuing what it holds; raises
        `PeerCopyFailed` when the peer refuses, leaves or stalls."""
        transfer_id = "file-" + random_token(self._env.random)
        send, receive = trio.open_memory_channel[FileMessage | None](math.inf)
        self._copies[transfer_id] = (peer, send)
        try:
            offset = await self._env.run_blocking(partial(_size_of, into))
            if offset:
                on_bytes(offset)
            await self._links.send_data(peer, FileRequest(transfer_id, card.model_id, name, offset))
            while True:
                message: FileMessage | None = None
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    message = await receive.receive()
                if idle.cancelled_caught:
                    raise PeerCopyFailed(f"node {peer} sent nothing for {IDLE_TIMEOUT:g} s")
                match message:
                    case None:
                        raise PeerCopyFailed(f"the link to node {peer} broke")
                    case FileRefused(reason=reason):
                        raise PeerCopyFailed(f"node {peer} refused: {reason}")
                    case FileChunk(offset=at, data=data):
                        if at != offset:
                            raise PeerCopyFailed(f"node {peer} sent bytes at {at}, not {offset}")
                        raw = base64.b64decode(data)
                        await self._env.run_blocking(partial(_append, into, raw))
                        offset += len(raw)
                        on_bytes(len(raw))
                    case FileEnd(size=size):
                        if size != offset:
                            raise PeerCopyFailed(f"node {peer} ended at {offset} of {size} bytes")
                        return
                    case _:
                        raise PeerCopyFailed(f"unexpected {type(message).__name__}")
        except PeerLost as exc:
            raise PeerCopyFailed(f"no link to node {peer}") from exc
        finally:
            self._copies.pop(transfer_id, None)


def _read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(data)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
