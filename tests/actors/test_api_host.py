"""Requests stop waiting for a model whose download or runner failed (pure view), and a
request sent before its node has joined waits to place the model instead of failing."""

from __future__ import annotations

import random
import types
from typing import cast

import trio
import trio.testing

from exo.actors.api_host import NodeBackend, failure_of
from exo.actors.command_client import CommandClient
from exo.actors.replica import Replica
from exo.actors.runner_handle import LOAD_FAILED
from exo.actors.runners import RunnerSupervisor
from exo.events.commands import Envelope, PlaceInstance
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
from exo.models.cards import BUNDLED_MODEL, card_for

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


async def test_a_request_sent_before_the_node_joined_places_once_it_has(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A node answers /healthz before its own registration is in the log; on a loaded machine
    # the first request could be refused with "no nodes are available to place on".
    sent: list[Envelope] = []
    replica = Replica(State())
    commands = CommandClient(A, random.Random(0), sent.append, trio.current_time)
    runners = cast(RunnerSupervisor, types.SimpleNamespace(handles={}))
    host = NodeBackend(A, replica, commands, runners, random.Random(0), ready_timeout=60)
    card = card_for(BUNDLED_MODEL)
    assert card is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(host._ready_route, card)
        await trio.sleep(5)
        assert sent == []  # nothing placed on a cluster this node is not part of yet
        profile = NodeProfile("h", "linux", 2, 2**34, 2**33, "cpu", 1, 2)
        joined = [MasterElected(A, 1), NodeProfiled(A, profile)]
        replica.apply_batch([IndexedEvent(i, 1, e) for i, e in enumerate(joined, start=1)])
        await trio.sleep(1)
        assert [type(e.command) for e in sent] == [PlaceInstance]
        nursery.cancel_scope.cancel()
