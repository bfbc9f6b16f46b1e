"""Copies of model files between nodes: who fetches from the hub and who waits (pure),
and two file-share actors over an in-memory link (resume, refusals, a lost peer)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from exo.actors.file_share import FileShare, PeerCopyFailed, plan_sources
from exo.actors.network import PeerLost
from exo.actors.replica import Replica
from exo.actors.wire import FILE_MESSAGE_TYPES, PeerMessage
from exo.environment import RealEnvironment
from exo.events.events import (
    DownloadStatusChanged,
    Event,
    IndexedEvent,
    InstanceCreated,
    MasterElected,
    ModelAdded,
    NodeProfiled,
)
from exo.events.facts import (
    DownloadStatus,
    Instance,
    ModelCard,
    NodeProfile,
    Shard,
    WeightFile,
)
from exo.events.ids import InstanceId, ModelId, NodeId
from exo.events.state import State, apply

A, B, C = NodeId("node-a"), NodeId("node-b"), NodeId("node-c")
FIRST, MIDDLE, LAST = "model-1.safetensors", "model-2.safetensors", "model-3.safetensors"
CARD = ModelCard(
    ModelId("org/m"), "m", "hub", "org/m", 3, 64, 4, 2, 100, 512,
    weight_bytes=300, loaded_bytes=1200, revision="f" * 40,
    weight_files=(
        WeightFile(FIRST, 100, "1" * 64, 0, 1, shared=True),
        WeightFile(MIDDLE, 100, "2" * 64, 1, 2),
        WeightFile(LAST, 100, "", 2, 3, shared=True),
    ),
    support_files=("config.json",), support_blobs=("",),
)  # fmt: skip


def state(*downloads: tuple[NodeId, str]) -> State:
    profile = NodeProfile("h", "linux", 2, 2**34, 2**33, "cpu", 1, 2)
    shards = (Shard(A, 0, 0, 1), Shard(B, 1, 1, 2), Shard(C, 2, 2, 3))
    events: list[Event] = [
        MasterElected(A, 1),
        *(NodeProfiled(n, profile) for n in (A, B, C)),
        ModelAdded(CARD),
        InstanceCreated(Instance(InstanceId("inst-1"), CARD.model_id, "pipeline", shards)),
        *(DownloadStatusChanged(n, CARD.model_id, DownloadStatus(p)) for n, p in downloads),  # type: ignore[arg-type]
    ]
    out = State()
    for index, event in enumerate(events, start=1):
        out = apply(out, IndexedEvent(index, 1, event))
    return out


def hashed(name: str) -> bool:
    return name in (FIRST, MIDDLE)


def test_the_lowest_node_fetches_shared_files_from_the_hub_and_the_others_wait() -> None:
    everything = (FIRST, MIDDLE, LAST)
    plan = plan_sources(state(), A, CARD, everything, hashed)
    assert plan == {FIRST: ("hub", None), MIDDLE: ("hub", None), LAST: ("hub", None)}
    # B waits for A's copy of the shared first file; the last file has no sha256 to
    # verify a copy by, so it comes from the hub; only B needs the middle one.
    assert plan_sources(state(), B, CARD, everything, hashed) == {
        FIRST: ("wait", A),
        MIDDLE: ("hub", None),
        LAST: ("hub", None),
    }
    # Once A holds it complete, B copies it; a node that refused is not asked again.
    done = state((A, "complete"))
    assert plan_sources(done, C, CARD, (FIRST,), hashed) == {FIRST: ("peer", (A,))}
    assert plan_sources(done, C, CARD, (FIRST,), hashed, frozenset({(A, FIRST)})) == {
        FIRST: ("wait", B)
    }
    # A failed download is waited for no longer.
    failed = state((A, "failed"), (B, "failed"))
    assert plan_sources(failed, C, CARD, (FIRST,), hashed) == {FIRST: ("hub", None)}


class Wire:
    """Two nodes' file-share actors joined by an in-memory link."""

    def __init__(self) -> None:
        self.shares: dict[NodeId, FileShare] = {}
        self.cut = False
        self.sent: list[tuple[NodeId, PeerMessage]] = []

    def links(self, me: NodeId) -> object:
        wire = self

        class Links:
            async def send_data(self, to: NodeId, message: PeerMessage) -> None:
                if wire.cut:
                    raise PeerLost(to)
                wire.sent.append((to, message))
                assert isinstance(message, FILE_MESSAGE_TYPES)
                wire.shares[to].deliver(me, message)  # type: ignore[arg-type]
                await trio.lowlevel.checkpoint()

        return Links()


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, bytes]:
    directory = tmp_path / "a" / "snapshot"
    directory.mkdir(parents=True)
    data = random.Random(7).randbytes(5 * 1024 * 1024 + 123)
    (directory / FIRST).write_bytes(data)
    return directory, data


async def test_a_file_is_copied_in_chunks_resumed_from_a_partial_and_refused_when_not_held(
    tmp_path: Path, served: tuple[Path, bytes]
) -> None:
    directory, data = served
    wire = Wire()
    replica = Replica(state((A, "complete")))
    for node, root in ((A, directory), (B, tmp_path / "b")):
        env = RealEnvironment(tmp_path / node, random.Random(node))
        links = wire.links(node)
        wire.shares[node] = FileShare(node, env, replica, links, lambda _c, r=root: r)  # type: ignore[arg-type]
    partial = tmp_path / "b" / "blob.exo-partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[: 1024 * 1024])  # what an earlier attempt left
    counted: list[int] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for share in wire.shares.values():
                nursery.start_soon(share.run)
            await wire.shares[B].copy(A, CARD, FIRST, partial, counted.append)
            assert partial.read_bytes() == data
            assert sum(counted) == len(data)
            # Only what the partial file lacked crossed the link.
            chunks = [m for _, m in wire.sent if type(m).__name__ == "FileChunk"]
            assert chunks[0].offset == 1024 * 1024  # type: ignore[attr-defined]
            # A file A does not hold, and a name that is not the model's, are refused.
            with pytest.raises(PeerCopyFailed, match="not complete here"):
                await wire.shares[B].copy(A, CARD, MIDDLE, tmp_path / "m", counted.append)
            with pytest.raises(PeerCopyFailed, match="is not a file of org/m"):
                await wire.shares[B].copy(A, CARD, "../../etc/passwd", tmp_path / "x", print)
            wire.cut = True
            with pytest.raises(PeerCopyFailed, match="no link"):
                await wire.shares[B].copy(A, CARD, FIRST, tmp_path / "y", print)
            nursery.cancel_scope.cancel()
    assert not await trio.Path(tmp_path / "x").exists()
