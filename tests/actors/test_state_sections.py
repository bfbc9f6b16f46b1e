"""The dashboard's view of the state: every section first, then only the sections an event
changed, with derived ones (instance status) following the maps they read."""

from __future__ import annotations

from exo.actors.state_sections import SECTIONS, changed_sections
from exo.api.admin_response import ModelView
from exo.events.events import (
    DownloadStatusChanged,
    Event,
    IndexedEvent,
    InstanceCreated,
    MasterElected,
    NodeDown,
    NodeProfiled,
    RequestsTallied,
)
from exo.events.facts import DownloadStatus, Instance, NodeProfile, RequestTally, Shard
from exo.events.ids import InstanceId, ModelId, NodeId
from exo.events.state import State, apply

A, B = NodeId("a"), NodeId("b")
MODEL = ModelId("org/m")
INSTANCE = InstanceId("inst-1")
PROFILE = NodeProfile("h", "linux", 2, 2**34, 2**33, "cpu", 1, 2)


def after(state: State, event: Event) -> State:
    return apply(state, IndexedEvent(state.last_index + 1, 1, event))


def no_models() -> list[ModelView]:
    return []


def test_first_every_section_then_only_what_an_event_changed() -> None:
    state = State()
    for event in (
        MasterElected(A, 1),
        NodeProfiled(A, PROFILE),
        NodeProfiled(B, PROFILE),
        InstanceCreated(Instance(INSTANCE, MODEL, "pipeline", (Shard(A, 0, 0, 2),))),
    ):
        state = after(state, event)
    first = changed_sections(state, None, no_models)
    assert set(first) == set(SECTIONS)
    assert set(first["nodes"]) == {"a", "b"}
    assert first["instances"]["inst-1"]["status"] == "downloading"

    downloaded = after(state, DownloadStatusChanged(A, MODEL, DownloadStatus("complete", 5, 5)))
    changed = changed_sections(downloaded, state, no_models)
    # The download moved the instance's status (derived) and the models' downloads.
    assert set(changed) == {"downloads", "instances", "models"}
    assert changed["instances"]["inst-1"]["status"] == "loading"
    assert changed["downloads"]["a"]["org/m"]["phase"] == "complete"

    tallied = after(downloaded, RequestsTallied(B, (RequestTally(INSTANCE, in_flight=3),)))
    assert set(changed_sections(tallied, downloaded, no_models)) <= {
        "in_flight",
        "request_counters",
    }
    assert changed_sections(tallied, downloaded, no_models)["in_flight"] == {"b": {"inst-1": 3}}

    gone = after(tallied, NodeDown(B))
    changed = changed_sections(gone, tallied, no_models)
    assert set(changed["nodes"]) == {"a"}
    assert changed["in_flight"] == {}
    assert changed_sections(gone, gone, no_models) == {}
