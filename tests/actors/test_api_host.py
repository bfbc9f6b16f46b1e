"""Requests stop waiting for a model whose download or runner failed (pure view)."""

from __future__ import annotations

from exo.actors.api_host import failure_of
from exo.actors.runner_handle import LOAD_FAILED
from exo.events.events import (
    DownloadStatusChanged,
    Event,
    IndexedEvent,
    InstanceCreated,
    MasterElected,
    NodeProfiled,
    RunnerStatusChanged,
)
from exo.events.facts import DownloadStatus, Instance, NodeProfile, RunnerStatus, Shard
from exo.events.ids import InstanceId, ModelId, NodeId
from exo.events.state import State, apply

A, B = NodeId("a"), NodeId("b")
MODEL = ModelId("org/m")
INSTANCE = InstanceId("inst-1")


def state(*events: Event) -> State:
    profile = NodeProfile("h", "linux", 2, 2**34, 2**33, "cpu", 1, 2)
    shards = (Shard(A, 0, 0, 2), Shard(B, 1, 2, 4))
    out = State()
    base: list[Event] = [
        MasterElected(A, 1),
        NodeProfiled(A, profile),
        NodeProfiled(B, profile),
        InstanceCreated(Instance(INSTANCE, MODEL, "pipeline", shards)),
    ]
    for index, event in enumerate([*base, *events], start=1):
        out = apply(out, IndexedEvent(index, 1, event))
    return out


def test_a_failed_download_or_runner_of_every_instance_is_reported_with_its_reason() -> None:
    assert failure_of(state(), MODEL) is None
    downloading = DownloadStatusChanged(A, MODEL, DownloadStatus("downloading", 5, 10))
    assert failure_of(state(downloading), MODEL) is None
    down = DownloadStatusChanged(B, MODEL, DownloadStatus("failed", detail="hub unreachable"))
    assert failure_of(state(downloading, down), MODEL) == (
        "download failed on node b: hub unreachable"
    )
    # A runner that cannot load the model fails requests at once; one that crashed while
    # serving restarts within seconds, and requests wait for it.
    unloadable = RunnerStatusChanged(
        INSTANCE, A, RunnerStatus("failed", f"{LOAD_FAILED}: no such file\nstderr tail: …")
    )
    assert failure_of(state(unloadable), MODEL) == (
        f"runner failed on node a: {LOAD_FAILED}: no such file"
    )
    crashed = RunnerStatusChanged(INSTANCE, A, RunnerStatus("failed", "runner process exited"))
    assert failure_of(state(crashed), MODEL) is None
    assert failure_of(state(), ModelId("other")) is None  # no instance: nothing failed
